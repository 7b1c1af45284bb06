package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

// identity is the body of every plain response: enough for a test to see
// which pod answered and what the request looked like when it arrived there
// (client address after any NAT or tunnel, headers after any proxy).
type identity struct {
	Pod       string              `json:"pod"`
	Namespace string              `json:"namespace"`
	Client    string              `json:"client"`
	Local     string              `json:"local"`
	Method    string              `json:"method"`
	Path      string              `json:"path"`
	Query     string              `json:"query"`
	Proto     string              `json:"proto"`
	Host      string              `json:"host"`
	Headers   map[string][]string `json:"headers"`
}

func identityOf(r *http.Request) identity {
	local := ""
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		local = a.String()
	}
	return identity{
		Pod:       podName(),
		Namespace: podNamespace(),
		Client:    r.RemoteAddr,
		Local:     local,
		Method:    r.Method,
		Path:      r.URL.Path,
		Query:     r.URL.RawQuery,
		Proto:     r.Proto,
		Host:      r.Host,
		Headers:   r.Header,
	}
}

type echoServer struct {
	open  atomic.Int64
	total atomic.Int64
	quiet bool
}

func (s *echoServer) connState(_ net.Conn, st http.ConnState) {
	switch st {
	case http.StateNew:
		s.open.Add(1)
		s.total.Add(1)
	case http.StateClosed:
		s.open.Add(-1)
		// StateHijacked is not counted down here: a WebSocket connection
		// stays open after the hijack, and handleWS counts it down on close.
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	body = append(body, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func queryInt(r *http.Request, name string, def int64) (int64, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad %s=%q", name, v)
	}
	return n, nil
}

func (s *echoServer) handleEcho(w http.ResponseWriter, r *http.Request) {
	// Drain the body so the connection can be kept alive after a POST.
	_, _ = io.Copy(io.Discard, r.Body)
	writeJSON(w, http.StatusOK, identityOf(r))
}

func (s *echoServer) handleHealthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	_, _ = io.WriteString(w, "ok\n")
}

func (s *echoServer) handleStats(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]int64{
		"open":  s.open.Load(),
		"total": s.total.Load(),
	})
}

// handleChunked streams n JSON lines, flushing each so that every line goes
// out as its own HTTP/1.1 chunk; delay (a Go duration) spaces them in time.
func (s *echoServer) handleChunked(w http.ResponseWriter, r *http.Request) {
	n, err := queryInt(r, "n", 5)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var delay time.Duration
	if d := r.URL.Query().Get("delay"); d != "" {
		if delay, err = time.ParseDuration(d); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	pod := podName()
	for i := int64(0); i < n; i++ {
		if i > 0 && delay > 0 {
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				return
			}
		}
		line, _ := json.Marshal(map[string]any{"i": i, "n": n, "pod": pod})
		if _, err := w.Write(append(line, '\n')); err != nil {
			return
		}
		flusher.Flush()
	}
}

// handleBytes sends exactly n bytes of the pattern in pattern.go with a
// Content-Length, in ~1 MiB writes that bypass net/http's small buffers.
func (s *echoServer) handleBytes(w http.ResponseWriter, r *http.Request) {
	n, err := queryInt(r, "n", 1024)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	for n > 0 {
		chunk := patternBlock
		if int64(len(chunk)) > n {
			chunk = chunk[:n]
		}
		m, err := w.Write(chunk)
		if err != nil {
			return
		}
		n -= int64(m)
	}
}

// handleUpload reads the whole body and reports its size, and its sha256
// when asked (?sha256=1) since hashing a GiB costs seconds of CPU.
func (s *echoServer) handleUpload(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost && r.Method != http.MethodPut {
		http.Error(w, "POST or PUT", http.StatusMethodNotAllowed)
		return
	}
	var h hash.Hash
	var dst io.Writer = io.Discard
	if r.URL.Query().Get("sha256") != "" {
		h = sha256.New()
		dst = h
	}
	buf := make([]byte, 1<<20)
	n, err := io.CopyBuffer(dst, r.Body, buf)
	if err != nil {
		http.Error(w, fmt.Sprintf("read %d bytes, then: %v", n, err), http.StatusBadRequest)
		return
	}
	resp := map[string]any{"pod": podName(), "bytes": n}
	if h != nil {
		resp["sha256"] = hex.EncodeToString(h.Sum(nil))
	}
	writeJSON(w, http.StatusOK, resp)
}

var upgrader = websocket.Upgrader{
	ReadBufferSize:  64 << 10,
	WriteBufferSize: 64 << 10,
	// Tests connect through port-forwards and tunnels with arbitrary Origin.
	CheckOrigin: func(*http.Request) bool { return true },
}

// handleWS sends the identity JSON first, then echoes every message back
// with its type (text or binary) until the peer closes.
func (s *echoServer) handleWS(w http.ResponseWriter, r *http.Request) {
	id := identityOf(r)
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // Upgrade has already written the HTTP error
	}
	defer s.open.Add(-1) // see connState: hijacked connections end here
	defer conn.Close()
	hello, _ := json.Marshal(id)
	if err := conn.WriteMessage(websocket.TextMessage, hello); err != nil {
		return
	}
	for {
		typ, msg, err := conn.ReadMessage()
		if err != nil {
			return
		}
		if err := conn.WriteMessage(typ, msg); err != nil {
			return
		}
	}
}

func (s *echoServer) logRequests(next http.Handler) http.Handler {
	if s.quiet {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.Printf("%s %s %s %s", r.RemoteAddr, r.Method, r.URL.RequestURI(), r.Proto)
		next.ServeHTTP(w, r)
	})
}

func (s *echoServer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", s.handleEcho)
	mux.HandleFunc("/healthz", s.handleHealthz)
	mux.HandleFunc("/stats", s.handleStats)
	mux.HandleFunc("/chunked", s.handleChunked)
	mux.HandleFunc("/bytes", s.handleBytes)
	mux.HandleFunc("/upload", s.handleUpload)
	mux.HandleFunc("/ws", s.handleWS)
	return s.logRequests(mux)
}

func runHTTP(args []string) error {
	fs := flag.NewFlagSet("http", flag.ContinueOnError)
	listen := fs.String("listen", ":8080", "address to listen on")
	quiet := fs.Bool("quiet", false, "do not log each request")
	if err := fs.Parse(args); err != nil {
		return err
	}
	s := &echoServer{quiet: *quiet}
	srv := &http.Server{
		Handler:   s.handler(),
		ConnState: s.connState,
		// No read or write timeout: GiB transfers through slow tunnels
		// must not be cut; only idle and header reads are bounded.
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       5 * time.Minute,
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	log.Printf("http: pod %q listening on %s", podName(), ln.Addr())
	return serveUntilSignal(func() error { return srv.Serve(ln) }, func(ctx context.Context) {
		_ = srv.Shutdown(ctx)
	})
}

// serveUntilSignal runs serve and stops it on SIGTERM/SIGINT, so the
// process (PID 1 in its container) exits promptly with status 0 when
// kubelet stops the pod.
func serveUntilSignal(serve func() error, stop func(context.Context)) error {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- serve() }()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	case <-ctx.Done():
		sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer scancel()
		stop(sctx)
		return nil
	}
}
