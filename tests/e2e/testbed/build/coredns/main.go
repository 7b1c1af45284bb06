// Command coredns is CoreDNS with only the plugins the ktpy test bed's
// cluster DNS needs, so the build pulls in no cloud SDKs and stays small.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// directives lists the imported plugins in plugin.cfg order: CoreDNS chains
// plugins in the order of this list, not the order of the Corefile.
// "prometheus" is not imported here but is linked in anyway (the kubernetes
// and forward plugins import plugin/metrics, which registers it); listing it
// lets the stock kubeadm Corefile, with its "prometheus :9153", load as is.
var directives = []string{
	"reload",
	"bind",
	"ready",
	"health",
	"prometheus",
	"errors",
	"log",
	"loadbalance",
	"cache",
	"kubernetes",
	"loop",
	"forward",
}

func main() {
	// The server type reads Directives lazily, so replacing the generated
	// list before Run is enough; a Corefile naming any other plugin fails.
	dnsserver.Directives = directives
	coremain.Run()
}
