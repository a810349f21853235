// Command garbage-collector runs Kubernetes' own garbage collector, the one kube-controller-manager
// runs as its "garbagecollector" controller (k8s.io/kubernetes/pkg/controller/garbagecollector),
// alone, against one API server. The local clusters of the tests and `kubetune dev-cluster` have
// no controller manager; without this, deleting a FineTuneJob would leave its trainer pods (and a
// Kueue Workload) running, where a real cluster deletes them through their ownerReferences.
//
// It is wired as kube-controller-manager wires it (cmd/kube-controller-manager/app/core.go and
// controllermanager.go at the same Kubernetes version): typed and metadata informers behind one
// factory, a deferred discovery REST mapper, the default ignored resources, Run with workers and
// Sync with a discovery client of its own. Only the period of Sync is shorter by default (5 s,
// not 30 s), so that a CRD installed by a test is collected for within seconds.
//
// Built by build-binaries.sh inside its kube-apiserver wrapper module, so that it uses the same
// Kubernetes version and shares its compiled packages.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/controller-manager/pkg/informerfactory"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/controller/garbagecollector"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the API server (required)")
	workers := flag.Int("workers", 20, "concurrent deletions (kube-controller-manager's --concurrent-gc-syncs)")
	syncPeriod := flag.Duration("sync-period", 5*time.Second, "how often discovery is read again for new resources (CRDs)")
	klog.InitFlags(nil)
	flag.Parse()
	if *kubeconfig == "" {
		fmt.Fprintln(os.Stderr, "garbage-collector: --kubeconfig is required")
		os.Exit(2)
	}
	if err := run(*kubeconfig, *workers, *syncPeriod); err != nil {
		fmt.Fprintf(os.Stderr, "garbage-collector: %v\n", err)
		os.Exit(1)
	}
}

func run(kubeconfig string, workers int, syncPeriod time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("loading %s: %w", kubeconfig, err)
	}
	config.UserAgent = "garbage-collector (kubetune local cluster)"
	// kube-controller-manager's defaults (--kube-api-qps 20, --kube-api-burst 30), doubled for the
	// garbage collector as it doubles them: each deletion takes two requests.
	config.QPS, config.Burst = 40, 30
	kubeClient, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	metadataClient, err := metadata.NewForConfig(config)
	if err != nil {
		return err
	}
	// The mapper has its own discovery client: Sync resets the mapper when resources change, and
	// must not reset the client it reads the changes from.
	mapperDiscovery, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(mapperDiscovery.Discovery()))

	typed := informers.NewSharedInformerFactory(kubeClient, 0)
	metadataInformers := metadatainformer.NewSharedInformerFactory(metadataClient, 0)
	started := make(chan struct{})
	collector, err := garbagecollector.NewGarbageCollector(ctx, kubeClient, metadataClient, mapper, garbagecollector.DefaultIgnoredResources(),
		informerfactory.NewInformerFactory(typed, metadataInformers), started)
	if err != nil {
		return fmt.Errorf("starting the garbage collector: %w", err)
	}

	go collector.Run(ctx, workers, syncPeriod)
	go collector.Sync(ctx, kubeClient.Discovery(), syncPeriod)
	typed.Start(ctx.Done())
	metadataInformers.Start(ctx.Done())
	close(started)
	<-ctx.Done()
	typed.Shutdown()
	metadataInformers.Shutdown()
	return nil
}
