// Command ktbed-echo is the one workload binary of the ktpy test bed: the
// servers that pods run and the clients that in-cluster callers run, so the
// bed builds and imports a single small static image.
package main

import (
	"fmt"
	"os"
)

const usage = `usage: ktbed-echo COMMAND [flags]

commands:
  http         HTTP/1.1 + WebSocket echo server (default --listen :8080)
  grpc         gRPC helloworld.Greeter server, h2c (default --listen :9090)
  grpc-client  call Greeter.SayHello once and print the reply
  ws-client    open a WebSocket, send messages, print what comes back
  load         open-loop HTTP load, one new connection per request
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmds := map[string]func([]string) error{
		"http":        runHTTP,
		"grpc":        runGRPC,
		"grpc-client": runGRPCClient,
		"ws-client":   runWSClient,
		"load":        runLoad,
	}
	cmd, ok := cmds[os.Args[1]]
	if !ok {
		if os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
			fmt.Print(usage)
			return
		}
		fmt.Fprintf(os.Stderr, "ktbed-echo: unknown command %q\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err := cmd(os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "ktbed-echo %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// podName is what every server reports as its identity, so a test can tell
// which replica (or which ktpy shadow) answered.
func podName() string {
	if v := os.Getenv("POD_NAME"); v != "" {
		return v
	}
	h, err := os.Hostname()
	if err != nil {
		return "unknown"
	}
	return h
}

func podNamespace() string {
	return os.Getenv("POD_NAMESPACE")
}
