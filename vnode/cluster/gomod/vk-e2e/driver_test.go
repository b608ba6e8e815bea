// The driver for virtual-kubelet's importable end-to-end suite (test/e2e): it calls
// EndToEndTestSuite with the kubeconfig, namespace and node name, as a provider's own
// test/e2e/main_test.go does. Build: go test -c; run: vk-e2e.test -test.v -kubeconfig=...
package vke2edriver

import (
	"flag"
	"strings"
	"testing"
	"time"

	vke2e "github.com/virtual-kubelet/virtual-kubelet/test/e2e"
)

var (
	kubeconfig   = flag.String("kubeconfig", "", "kubeconfig of the cluster")
	namespace    = flag.String("namespace", "default", "namespace the suite creates its pods in")
	nodeName     = flag.String("node-name", "", "name of the node under test")
	watchTimeout = flag.Duration("watch-timeout", 2*time.Minute, "how long the suite waits for a condition")
	skip         = flag.String("skip", "", "comma-separated suite tests to skip (e.g. TestGetStatsSummary)")
)

func TestEndToEnd(t *testing.T) {
	skipped := map[string]bool{}
	for _, name := range strings.Split(*skip, ",") {
		if name = strings.TrimSpace(name); name != "" {
			skipped[name] = true
		}
	}
	suite := vke2e.NewEndToEndTestSuite(vke2e.EndToEndTestSuiteConfig{
		Kubeconfig:     *kubeconfig,
		Namespace:      *namespace,
		NodeName:       *nodeName,
		WatchTimeout:   *watchTimeout,
		ShouldSkipTest: func(name string) bool { return skipped[name] },
	})
	suite.Run(t)
}
