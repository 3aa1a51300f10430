package portforward

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/proxy"
	apiproxy "k8s.io/apiserver/pkg/util/proxy"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/transport"
	criportforward "k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/streaming/pkg/httpstream/wsstream"
)

const testToken = "t0ken"

// fakeCluster is the two halves of a real port-forward without a cluster: the API
// server's proxying (the same apiserver and apimachinery handlers kube-apiserver runs,
// including the WebSocket-to-SPDY tunnel) in front of the kubelet's own port-forward
// server from k8s.io/cri-streaming. Only the last hop differs: where the kubelet enters
// the pod's network namespace, the forwarder here dials 127.0.0.1 on a port the test maps.
type fakeCluster struct {
	t          *testing.T
	api        *httptest.Server
	kubelet    *httptest.Server
	websockets bool // false plays an API server from before WebSocket port-forward

	mu        sync.Mutex
	pods      map[string]map[int32]int // pod → port in pod → port on 127.0.0.1
	protocols []string                 // "websocket" or "spdy", per upgrade the API server proxied
}

func newFakeCluster(t *testing.T, websockets bool) *fakeCluster {
	t.Helper()
	fc := &fakeCluster{t: t, websockets: websockets, pods: map[string]map[int32]int{}}
	fc.kubelet = httptest.NewServer(http.HandlerFunc(fc.serveKubelet))
	fc.api = httptest.NewServer(http.HandlerFunc(fc.serveAPI))
	t.Cleanup(func() {
		fc.api.Close()
		fc.kubelet.Close()
	})
	return fc
}

func (fc *fakeCluster) config() *rest.Config {
	return &rest.Config{Host: fc.api.URL, BearerToken: testToken}
}

// addPod makes pod exist; ports maps container ports to local listeners. A container
// port with no entry refuses connections, as a pod with nothing listening does.
func (fc *fakeCluster) addPod(pod string, ports map[int32]int) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.pods[pod] = ports
}

func (fc *fakeCluster) seen() []string {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return append([]string(nil), fc.protocols...)
}

// parsePortForwardPath splits /api/v1/namespaces/<ns>/pods/<pod>/portforward.
func parsePortForwardPath(p string) (ns, pod string, ok bool) {
	parts := strings.Split(strings.Trim(p, "/"), "/")
	if len(parts) != 7 || parts[0] != "api" || parts[1] != "v1" || parts[2] != "namespaces" || parts[4] != "pods" || parts[6] != "portforward" {
		return "", "", false
	}
	return parts[3], parts[5], true
}

func writeStatus(w http.ResponseWriter, code int, reason metav1.StatusReason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure, Message: msg, Reason: reason, Code: int32(code),
	})
}

func (fc *fakeCluster) serveAPI(w http.ResponseWriter, req *http.Request) {
	if req.Header.Get("Authorization") != "Bearer "+testToken {
		writeStatus(w, http.StatusUnauthorized, metav1.StatusReasonUnauthorized, "Unauthorized")
		return
	}
	_, pod, ok := parsePortForwardPath(req.URL.Path)
	if !ok {
		writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, "the server could not find the requested resource")
		return
	}
	fc.mu.Lock()
	_, exists := fc.pods[pod]
	fc.mu.Unlock()
	if !exists {
		writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, fmt.Sprintf("pods %q not found", pod))
		return
	}
	loc, err := url.Parse(fc.kubelet.URL)
	if err != nil {
		panic(err)
	}
	loc.Path = req.URL.Path
	rt, err := transport.New(&transport.Config{})
	if err != nil {
		writeStatus(w, http.StatusInternalServerError, metav1.StatusReasonInternalError, err.Error())
		return
	}
	upgrader := proxy.NewUpgradeAwareHandler(loc, rt, false, true, proxy.NewErrorResponder(responder{fc.t}))
	if wsstream.IsWebSocketRequest(req) {
		if !fc.websockets {
			writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, "Upgrade request required")
			return
		}
		fc.record("websocket")
		apiproxy.NewTunnelingHandler(upgrader).ServeHTTP(w, req)
		return
	}
	fc.record("spdy")
	upgrader.ServeHTTP(w, req)
}

func (fc *fakeCluster) record(p string) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.protocols = append(fc.protocols, p)
}

type responder struct{ t *testing.T }

func (r responder) Error(err error) { r.t.Logf("fake apiserver proxy error: %v", err) }

func (fc *fakeCluster) serveKubelet(w http.ResponseWriter, req *http.Request) {
	_, pod, ok := parsePortForwardPath(req.URL.Path)
	if !ok {
		http.NotFound(w, req)
		return
	}
	criportforward.ServePortForward(w, req, forwarder{fc}, pod, "uid-"+pod, nil, time.Minute, 30*time.Second, []string{"portforward.k8s.io"})
}

type forwarder struct{ fc *fakeCluster }

// PortForward copies between the stream and a local listener the way the container
// runtime copies between the stream and the port inside the pod.
func (f forwarder) PortForward(ctx context.Context, pod, _ string, port int32, stream io.ReadWriteCloser) error {
	f.fc.mu.Lock()
	local, ok := f.fc.pods[pod][port]
	f.fc.mu.Unlock()
	if !ok {
		local = closedPort(f.fc.t)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp4", fmt.Sprintf("127.0.0.1:%d", local))
	if err != nil {
		return fmt.Errorf("failed to connect to localhost:%d inside namespace of pod %s: %w", port, pod, err)
	}
	defer conn.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(conn, stream)
		_ = conn.(*net.TCPConn).CloseWrite()
	}()
	_, _ = io.Copy(stream, conn)
	// Half-close toward the client so it reads EOF, as the runtime does when the server
	// in the pod closes; the other direction ends when the client closes.
	_ = stream.Close()
	<-done
	return nil
}

// closedPort returns a 127.0.0.1 port that nothing listens on.
func closedPort(t *testing.T) int {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Errorf("listen: %v", err)
		return 1
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	return port
}
