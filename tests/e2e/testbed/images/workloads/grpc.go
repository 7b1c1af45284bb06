package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
)

// greeting is the JSON carried in HelloReply.message, so a test gets the
// same facts as from the HTTP server without a schema of its own.
type greeting struct {
	Greeting  string `json:"greeting"`
	Pod       string `json:"pod"`
	Namespace string `json:"namespace"`
	Peer      string `json:"peer"`
	Version   string `json:"version"`
}

type greeter struct {
	pb.UnimplementedGreeterServer
}

func (greeter) SayHello(ctx context.Context, req *pb.HelloRequest) (*pb.HelloReply, error) {
	g := greeting{
		Greeting:  "Hello " + req.GetName(),
		Pod:       podName(),
		Namespace: podNamespace(),
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		g.Peer = p.Addr.String()
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("version"); len(v) > 0 {
			g.Version = v[0]
		}
	}
	msg, err := json.Marshal(g)
	if err != nil {
		return nil, err
	}
	log.Printf("grpc: SayHello from %s name=%q version=%q", g.Peer, req.GetName(), g.Version)
	return &pb.HelloReply{Message: string(msg)}, nil
}

func runGRPC(args []string) error {
	fs := flag.NewFlagSet("grpc", flag.ContinueOnError)
	listen := fs.String("listen", ":9090", "address to listen on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	pb.RegisterGreeterServer(srv, greeter{})
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("helloworld.Greeter", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)
	log.Printf("grpc: pod %q listening on %s (h2c)", podName(), ln.Addr())
	return serveUntilSignal(func() error { return srv.Serve(ln) }, func(ctx context.Context) {
		done := make(chan struct{})
		go func() { srv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			srv.Stop()
		}
	})
}

// headerFlags collects repeated --header k=v flags.
type headerFlags []string

func (h *headerFlags) String() string     { return strings.Join(*h, ",") }
func (h *headerFlags) Set(v string) error { *h = append(*h, v); return nil }

// parse turns the k=v flags into headers (gRPC metadata, an HTTP request's or a
// WebSocket upgrade's).
func (h headerFlags) parse() (http.Header, error) {
	header := http.Header{}
	for _, kv := range h {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("bad --header %q, want k=v", kv)
		}
		header.Add(k, v)
	}
	return header, nil
}

func runGRPCClient(args []string) error {
	fs := flag.NewFlagSet("grpc-client", flag.ContinueOnError)
	addr := fs.String("addr", "", "server host:port (required)")
	name := fs.String("name", "ktbed", "name to send in HelloRequest")
	timeout := fs.Duration("timeout", 10*time.Second, "deadline of the call")
	var headers headerFlags
	fs.Var(&headers, "header", "metadata k=v to send (repeatable)")
	count := fs.Int("count", 1, "calls to make on one connection (one HTTP/2 connection, many streams)")
	interval := fs.Duration("interval", 0, "pause between calls")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" {
		return fmt.Errorf("--addr is required")
	}
	header, err := headers.parse()
	if err != nil {
		return err
	}
	md := metadata.MD{}
	for k, values := range header {
		md.Append(strings.ToLower(k), values...)
	}
	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := pb.NewGreeterClient(conn)
	for i := 0; i < *count; i++ {
		if i > 0 {
			time.Sleep(*interval)
		}
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		ctx = metadata.NewOutgoingContext(ctx, md)
		reply, err := client.SayHello(ctx, &pb.HelloRequest{Name: *name})
		cancel()
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintln(os.Stdout, reply.GetMessage()); err != nil {
			return err
		}
	}
	return nil
}
