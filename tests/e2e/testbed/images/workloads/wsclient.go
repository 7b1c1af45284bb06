package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/gorilla/websocket"
)

// messageFlags collects repeated --message flags.
type messageFlags []string

func (m *messageFlags) String() string     { return fmt.Sprint(*m) }
func (m *messageFlags) Set(v string) error { *m = append(*m, v); return nil }

// runWSClient prints every message it receives, one per line: first the
// server's greeting, then the echo of each --message in order.
func runWSClient(args []string) error {
	fs := flag.NewFlagSet("ws-client", flag.ContinueOnError)
	url := fs.String("url", "", "ws:// URL (required)")
	timeout := fs.Duration("timeout", 10*time.Second, "deadline for the whole exchange")
	var msgs messageFlags
	fs.Var(&msgs, "message", "text message to send (repeatable; default: one \"hello\")")
	var headers headerFlags
	fs.Var(&headers, "header", "request header k=v for the upgrade (repeatable)")
	interval := fs.Duration("interval", 0, "pause before each message (a long-lived connection)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *url == "" {
		return fmt.Errorf("--url is required")
	}
	if len(msgs) == 0 {
		msgs = messageFlags{"hello"}
	}
	// No proxy from the environment: a test must know which path it measures.
	dialer := websocket.Dialer{HandshakeTimeout: *timeout}
	header, err := headers.parse()
	if err != nil {
		return err
	}
	conn, _, err := dialer.Dial(*url, header)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(*timeout))
	_, hello, err := conn.ReadMessage()
	if err != nil {
		return fmt.Errorf("reading greeting: %w", err)
	}
	fmt.Fprintln(os.Stdout, string(hello))
	for _, m := range msgs {
		time.Sleep(*interval)
		_ = conn.SetReadDeadline(time.Now().Add(*timeout))
		if err := conn.WriteMessage(websocket.TextMessage, []byte(m)); err != nil {
			return err
		}
		_, echo, err := conn.ReadMessage()
		if err != nil {
			return fmt.Errorf("reading echo of %q: %w", m, err)
		}
		fmt.Fprintln(os.Stdout, string(echo))
	}
	_ = conn.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	return nil
}
