// Command goref is a BENCHMARK REFERENCE ONLY, not part of vnode and not shipped.
//
// It measures how fast the real Kubernetes Go code moves port-forward bytes on
// this machine, as a ceiling to compare vnode's Python /portForward against:
//
//	goref serve   --listen HOST:PORT --cert F --key F --target HOST
//	    An HTTPS server answering GET/POST /portForward/{namespace}/{pod}[/{uid}]
//	    with the kubelet's own streaming code (k8s.io/kubelet/pkg/cri/streaming/
//	    portforward.ServePortForward: SPDY "portforward.k8s.io" and the v4
//	    WebSocket channel protocols). Each forwarded stream is dialed to
//	    TARGET:port over TCP. No client certs, no authn/authz: local bench only.
//
//	goref forward --url https://HOST:PORT/portForward/NS/POD --ca F
//	              [--cert F --key F] [--token T] [--local 127.0.0.1[:LPORT]]
//	              --ports LOCAL:REMOTE[,LOCAL:REMOTE...]
//	    The client side used by kubectl/the API server: client-go
//	    tools/portforward over transport/spdy.RoundTripperFor, dialing the URL
//	    directly (no API server in between).
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	kubeletpf "k8s.io/kubelet/pkg/cri/streaming/portforward"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: goref serve|forward [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "forward":
		err = forward(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q (want serve or forward)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "goref:", err)
		os.Exit(1)
	}
}

// signalContext is cancelled on SIGINT/SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}

// ---------------------------------------------------------------- serve

// Timeouts as the kubelet uses them (streaming.DefaultConfig /
// kubelet --streaming-connection-idle-timeout default and
// remotecommand DefaultStreamCreationTimeout).
const (
	streamIdleTimeout     = 4 * time.Hour
	streamCreationTimeout = 30 * time.Second
)

// tcpForwarder implements the kubelet's portforward.PortForwarder by dialing
// target:port, like containerd/dockershim did inside the pod's netns.
type tcpForwarder struct{ target string }

// PortForward copies bytes both ways between the stream and a TCP connection.
// Client EOF half-closes the TCP side (CloseWrite) and we keep waiting for the
// target's reply; target EOF half-closes the stream and, like containerd's CRI
// forwarder (socat -t semantics), we then give the other direction 1s to
// finish before returning (the caller closes the streams).
func (f tcpForwarder) PortForward(ctx context.Context, _ string, _ types.UID, port int32, stream io.ReadWriteCloser) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(f.target, strconv.Itoa(int(port))))
	if err != nil {
		return err
	}
	defer conn.Close()

	toTarget := make(chan error, 1)
	go func() {
		_, err := io.Copy(conn, stream)
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		toTarget <- err
	}()
	toClient := make(chan error, 1)
	go func() {
		_, err := io.Copy(stream, conn)
		_ = stream.Close() // SPDY: FIN (half-close) on our side of the data stream
		toClient <- err
	}()

	select {
	case err = <-toClient:
		select {
		case <-toTarget:
		case <-time.After(time.Second):
		}
	case err = <-toTarget:
		err = errors.Join(err, <-toClient)
	}
	return err
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:10250", "HOST:PORT to listen on (HTTPS)")
	certFile := fs.String("cert", "", "TLS certificate (PEM)")
	keyFile := fs.String("key", "", "TLS private key (PEM)")
	target := fs.String("target", "127.0.0.1", "host every forwarded port is dialed on")
	_ = fs.Parse(args)
	if *certFile == "" || *keyFile == "" {
		return errors.New("serve: --cert and --key are required")
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return err
	}

	fwd := tcpForwarder{target: *target}
	handler := func(w http.ResponseWriter, r *http.Request) {
		// Same steps as the kubelet's getPortForward: options from the
		// request (ports come from ?port= for WebSocket, from stream headers
		// for SPDY), then the library's ServePortForward.
		opts, err := kubeletpf.NewV4Options(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		pod := r.PathValue("namespace") + "/" + r.PathValue("pod")
		kubeletpf.ServePortForward(w, r, fwd, pod, types.UID(r.PathValue("uid")), opts,
			streamIdleTimeout, streamCreationTimeout, kubeletpf.SupportedProtocols)
	}
	mux := http.NewServeMux()
	for _, m := range []string{"GET", "POST"} {
		mux.HandleFunc(m+" /portForward/{namespace}/{pod}", handler)
		mux.HandleFunc(m+" /portForward/{namespace}/{pod}/{uid}", handler)
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           mux,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 30 * time.Second,
	}
	ctx, stop := signalContext()
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	fmt.Printf("ready https://%s\n", ln.Addr())

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	// Hijacked (upgraded) connections are not tracked by Shutdown; closing
	// listeners and exiting the process ends them.
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return nil
}

// ---------------------------------------------------------------- forward

func forward(args []string) error {
	fs := flag.NewFlagSet("forward", flag.ExitOnError)
	rawURL := fs.String("url", "", "https://HOST:PORT/portForward/NS/POD")
	caFile := fs.String("ca", "", "CA bundle used to verify the server (PEM)")
	certFile := fs.String("cert", "", "client certificate (PEM, optional)")
	keyFile := fs.String("key", "", "client key (PEM, optional)")
	token := fs.String("token", "", "bearer token (optional)")
	local := fs.String("local", "127.0.0.1", "local listen HOST[:PORT]; PORT is used for --ports entries without LOCAL:")
	portsFlag := fs.String("ports", "", "LOCAL:REMOTE[,LOCAL:REMOTE...] (kubectl syntax)")
	_ = fs.Parse(args)
	if *rawURL == "" || *portsFlag == "" {
		return errors.New("forward: --url and --ports are required")
	}
	u, err := url.Parse(*rawURL)
	if err != nil {
		return err
	}

	host, basePort := *local, 0
	if h, p, err := net.SplitHostPort(*local); err == nil {
		host = h
		if basePort, err = strconv.Atoi(p); err != nil {
			return fmt.Errorf("bad --local port: %v", err)
		}
	}
	var ports []string
	for i, p := range strings.Split(*portsFlag, ",") {
		if !strings.Contains(p, ":") && basePort != 0 {
			p = fmt.Sprintf("%d:%s", basePort+i, p) // --local PORT for bare REMOTE
		}
		ports = append(ports, p)
	}

	cfg := &rest.Config{
		Host:            u.Scheme + "://" + u.Host,
		BearerToken:     *token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: *caFile, CertFile: *certFile, KeyFile: *keyFile},
	}
	rt, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		return err
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, u)

	ctx, stop := signalContext()
	defer stop()
	stopCh := make(chan struct{})
	go func() { <-ctx.Done(); close(stopCh) }()
	readyCh := make(chan struct{})
	pf, err := portforward.NewOnAddresses(dialer, []string{host}, ports, stopCh, readyCh, os.Stderr, os.Stderr)
	if err != nil {
		return err
	}
	go func() { <-readyCh; fmt.Println("ready") }()
	return pf.ForwardPorts()
}
