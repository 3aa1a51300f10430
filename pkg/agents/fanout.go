package agents

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/portforward"
)

// AgentPort is the agent's gRPC port on 127.0.0.1 inside its pod.
const AgentPort = 9460

const (
	// DefaultConcurrency bounds how many nodes are called at once when FanoutOptions
	// leaves it zero. Each call is its own port-forward, i.e. its own upgraded connection
	// through the API server, so the bound protects the API server as much as us. A call
	// mostly waits on round trips, so 64 at once keeps a 1000-node cluster to seconds.
	DefaultConcurrency = 64
	// DefaultTimeout is the per-node budget for dial plus call when FanoutOptions leaves
	// it zero.
	DefaultTimeout = 10 * time.Second
)

// DialFunc opens a connection to the agent in pod.
type DialFunc func(ctx context.Context, pod *corev1.Pod) (net.Conn, error)

// PortForwardDial reaches each agent through the API server's pods/portforward on
// AgentPort, the only way in: the agent listens on the pod's loopback.
func PortForwardDial(d *portforward.Dialer) DialFunc {
	return func(ctx context.Context, pod *corev1.Pod) (net.Conn, error) {
		return d.DialPod(ctx, pod.Namespace, pod.Name, AgentPort)
	}
}

// FanoutOptions tunes Fanout; zero values take the defaults above.
type FanoutOptions struct {
	Concurrency int
	// Timeout covers dialing and the call for one node.
	Timeout time.Duration
}

// Result is the outcome for one target.
type Result[T any] struct {
	Target Target
	Value  T
	// Err is a *NodeError whose message is short enough for a table cell.
	Err error
}

// Kinds of per-node failure, for errors.Is on a Result's Err.
var (
	// ErrNotUsable marks a target that was not dialed because of its Problem.
	ErrNotUsable = errors.New("agent not usable")
	// ErrUnreachable marks a failed dial or a connection lost during the call.
	ErrUnreachable = errors.New("agent unreachable")
	// ErrTimeout marks a node that did not answer within the per-node timeout.
	ErrTimeout = errors.New("timed out")
	// ErrVersionSkew marks an agent that lacks the called RPC.
	ErrVersionSkew = errors.New("version skew")
	// ErrCanceled marks a call abandoned because the caller's context ended.
	ErrCanceled = errors.New("canceled")
)

// NodeError is one node's failure: Message is the human reason, Kind one of the Err*
// values above (nil for other errors), Err the underlying error (gRPC status included).
type NodeError struct {
	Kind    error
	Message string
	Err     error
}

func (e *NodeError) Error() string { return e.Message }

func (e *NodeError) Unwrap() []error {
	var errs []error
	if e.Kind != nil {
		errs = append(errs, e.Kind)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

// Fanout calls every usable target in parallel and returns one Result per target, in
// target order. Targets with a Problem are not dialed. At most opts.Concurrency nodes are
// in flight, each under its own timeout covering dial and call, so one dead or slow node
// costs only its own row. Cancelling ctx ends every call promptly. call gets the target it
// is for and a client of its agent.
//
// Each node gets a fresh gRPC connection that is closed after call returns: every
// connection is one port-forward, and keeping idle port-forwards open to hundreds of
// nodes would only hold API server connections for nothing.
func Fanout[T any](ctx context.Context, targets []Target, dial DialFunc, opts FanoutOptions, call func(ctx context.Context, t Target, c agentapi.AgentClient) (T, error)) []Result[T] {
	concurrency := opts.Concurrency
	if concurrency <= 0 {
		concurrency = DefaultConcurrency
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	results := make([]Result[T], len(targets))
	// A plain Group, not WithContext: one node's error must not cancel the others.
	var g errgroup.Group
	g.SetLimit(concurrency)
	for i, t := range targets {
		results[i].Target = t
		switch {
		case t.Problem != "":
			results[i].Err = &NodeError{Kind: ErrNotUsable, Message: t.Problem}
			continue
		case t.Pod == nil:
			results[i].Err = &NodeError{Kind: ErrNotUsable, Message: "no agent pod"}
			continue
		}
		g.Go(func() error {
			results[i].Value, results[i].Err = callNode(ctx, t, dial, timeout, call)
			return nil
		})
	}
	_ = g.Wait()
	return results
}

func callNode[T any](ctx context.Context, t Target, dial DialFunc, timeout time.Duration, call func(context.Context, Target, agentapi.AgentClient) (T, error)) (T, error) {
	pod := t.Pod
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, &NodeError{Kind: ErrCanceled, Message: "canceled", Err: err}
	}
	nodeCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	// gRPC reports a failed dial as Unavailable with the reason quoted inside its own
	// text; keeping the dial's error gives the row the reason as the dialer wrote it.
	var dialMu sync.Mutex
	var dialErr error

	// Insecure transport credentials are deliberate: the agent listens only on the pod's
	// loopback, and the only path to it is the API server's pods/portforward, which is
	// TLS to the API server, authenticated and authorised by Kubernetes RBAC, and then
	// the kubelet's own authenticated stream. TLS inside that tunnel would add a
	// certificate to manage and no protection.
	// The target only names the connection (it becomes :authority); the dialer decides
	// where it goes. name.namespace keeps it a valid authority.
	cc, err := grpc.NewClient("passthrough:///"+pod.Name+"."+pod.Namespace,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(dialCtx context.Context, _ string) (net.Conn, error) {
			// gRPC's dial context belongs to the ClientConn, not to this call; bind the
			// node's budget to it as well so a stuck dial ends with the node's timeout.
			dialCtx, stop := mergeCancel(dialCtx, nodeCtx)
			defer stop()
			c, err := dial(dialCtx, pod)
			dialMu.Lock()
			dialErr = err
			dialMu.Unlock()
			return c, err
		}),
	)
	if err != nil {
		return zero, &NodeError{Message: "creating gRPC client: " + err.Error(), Err: err}
	}
	defer func() { _ = cc.Close() }()

	v, err := call(nodeCtx, t, agentapi.NewAgentClient(cc))
	if err != nil {
		dialMu.Lock()
		defer dialMu.Unlock()
		return v, describe(err, dialErr, ctx, nodeCtx, timeout)
	}
	return v, nil
}

// mergeCancel returns a context that ends when either a or b does; the values and the
// deadline are a's, b only adds its cancellation.
func mergeCancel(a, b context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(a)
	stop := context.AfterFunc(b, func() { cancel(context.Cause(b)) })
	return ctx, func() {
		stop()
		cancel(context.Canceled)
	}
}

// describe turns a call's error into a short reason for the node's row; dialErr is the
// last dial failure, if any.
func describe(err, dialErr error, parent, nodeCtx context.Context, timeout time.Duration) error {
	if parent.Err() != nil {
		return &NodeError{Kind: ErrCanceled, Message: "canceled", Err: err}
	}
	st, isStatus := status.FromError(err)
	switch {
	case errors.Is(nodeCtx.Err(), context.DeadlineExceeded) && (!isStatus || st.Code() == codes.DeadlineExceeded || st.Code() == codes.Unavailable || st.Code() == codes.Canceled),
		isStatus && st.Code() == codes.DeadlineExceeded:
		return &NodeError{Kind: ErrTimeout, Message: fmt.Sprintf("timed out after %v", timeout), Err: err}
	case !isStatus:
		return &NodeError{Message: err.Error(), Err: err}
	case st.Code() == codes.Unavailable && dialErr != nil:
		return &NodeError{Kind: ErrUnreachable, Message: "agent unreachable: " + dialErr.Error(), Err: errors.Join(err, dialErr)}
	case st.Code() == codes.Unavailable:
		return &NodeError{Kind: ErrUnreachable, Message: "agent unreachable: " + transportReason(st.Message()), Err: err}
	case st.Code() == codes.Unimplemented:
		return &NodeError{Kind: ErrVersionSkew, Message: "agent too old: " + st.Message() + " (version skew)", Err: err}
	case st.Code() == codes.Canceled:
		return &NodeError{Kind: ErrCanceled, Message: "canceled", Err: err}
	default:
		return &NodeError{Message: fmt.Sprintf("agent error (%s): %s", st.Code(), st.Message()), Err: err}
	}
}

// transportReason strips gRPC's wrapping from a transport failure, which reads
// `connection error: desc = "transport: <the reason, quoted>"`.
func transportReason(msg string) string {
	if rest, ok := strings.CutPrefix(msg, "connection error: desc = "); ok {
		msg = rest
		if u, err := strconv.Unquote(rest); err == nil {
			msg = u
		}
	}
	for _, prefix := range []string{"transport: ", "Error while dialing: ", "error while dialing: "} {
		msg = strings.TrimPrefix(msg, prefix)
	}
	return msg
}
