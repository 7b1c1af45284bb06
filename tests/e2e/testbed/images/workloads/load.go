package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"os"
	"sync"
	"time"
)

// result is one line of load's output, one per request.
type result struct {
	T      float64 `json:"t"` // unix time when the request was sent
	OK     bool    `json:"ok"`
	Status int     `json:"status"`
	Pod    string  `json:"pod"`
	Err    string  `json:"err"`
	MS     float64 `json:"ms"` // time to the end of the body
}

type summary struct {
	Summary  bool           `json:"summary"`
	Sent     int            `json:"sent"`
	OK       int            `json:"ok"`
	Failed   int            `json:"failed"`
	Pods     map[string]int `json:"pods"`
	Errors   map[string]int `json:"errors"`
	Rate     float64        `json:"rate"`
	Duration float64        `json:"duration"`
}

// runLoad is open-loop: request i is sent at start + i/rate whether or not
// earlier ones have finished, so a stalled backend shows as failures at the
// times it stalled instead of silently slowing the generator down.
func runLoad(args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	url := fs.String("url", "", "URL to GET (required)")
	rate := fs.Float64("rate", 10, "requests per second")
	duration := fs.Duration("duration", 10*time.Second, "how long to send")
	timeout := fs.Duration("timeout", 2*time.Second, "per-request timeout, connect to end of body")
	var headers headerFlags
	fs.Var(&headers, "header", "request header k=v (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *url == "" {
		return fmt.Errorf("--url is required")
	}
	if *rate <= 0 || *duration <= 0 {
		return fmt.Errorf("--rate and --duration must be positive")
	}
	header, err := headers.parse()
	if err != nil {
		return err
	}
	total := int(*rate * duration.Seconds())
	if total < 1 {
		total = 1
	}
	client := &http.Client{
		Timeout: *timeout,
		Transport: &http.Transport{
			// A fresh TCP connection per request, so every request goes
			// through connection setup (DNS, Service NAT, a new backend
			// choice) the way a rolling swap would hit new callers. Without
			// reuse, net/http never retries a request either.
			DisableKeepAlives: true,
			Proxy:             nil,
			DialContext:       (&net.Dialer{Timeout: *timeout}).DialContext,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}

	var mu sync.Mutex // guards stdout and sum
	enc := json.NewEncoder(os.Stdout)
	sum := summary{Summary: true, Sent: total, Pods: map[string]int{}, Errors: map[string]int{}, Rate: *rate}
	var wg sync.WaitGroup
	start := time.Now()
	interval := time.Duration(float64(time.Second) / *rate)
	for i := 0; i < total; i++ {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := oneRequest(client, *url, header)
			mu.Lock()
			defer mu.Unlock()
			_ = enc.Encode(r)
			if r.OK {
				sum.OK++
				sum.Pods[r.Pod]++
			} else {
				sum.Failed++
				key := r.Err
				if key == "" {
					key = fmt.Sprintf("status %d", r.Status)
				}
				sum.Errors[key]++
			}
		}()
	}
	wg.Wait()
	sum.Duration = time.Since(start).Seconds()
	mu.Lock()
	defer mu.Unlock()
	return enc.Encode(sum)
}

func oneRequest(client *http.Client, url string, header http.Header) (r result) {
	sent := time.Now()
	r.T = float64(sent.UnixNano()) / 1e9
	// r is a named result so this runs after every return below.
	defer func() { r.MS = float64(time.Since(sent).Microseconds()) / 1000 }()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		r.Err = shortErr(err)
		return r
	}
	req.Header = header.Clone()
	resp, err := client.Do(req)
	if err != nil {
		r.Err = shortErr(err)
		return r
	}
	defer resp.Body.Close()
	r.Status = resp.StatusCode
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		r.Err = shortErr(err)
		return r
	}
	var id struct {
		Pod string `json:"pod"`
	}
	if json.Unmarshal(body, &id) == nil {
		r.Pod = id.Pod
	}
	r.OK = resp.StatusCode >= 200 && resp.StatusCode < 300
	return r
}

// shortErr drops the `Get "URL": ` prefix that every client error repeats,
// so the summary groups errors by cause.
func shortErr(err error) string {
	var ue *neturl.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}
