// Package netns opens sockets inside another network namespace without moving the calling
// goroutine, so that the agent can reach a pod's loopback (around its sidecar) from the host.
//
// A network namespace is a property of an OS thread, and a socket keeps the namespace it was
// created in for its whole life. So each operation runs on a fresh goroutine locked to its
// thread: enter the target namespace, create the socket, enter the original namespace again.
// The socket can then be used from any goroutine. If switching back fails, the thread is left
// locked and its goroutine ends, which makes the Go runtime terminate the thread instead of
// handing it, still in the pod's namespace, to unrelated goroutines (the main thread cannot end;
// the runtime parks it for good instead, and /proc/self/ns/net, which follows the main thread,
// then names the pod's namespace: this package only ever reads the current thread's).
//
// Entering a network namespace needs CAP_SYS_ADMIN.
package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// setns is a variable so that tests can make the switch back fail.
var setns = unix.Setns

// Do runs fn on an OS thread that is inside the network namespace at nsPath (for example
// /proc/<pid>/ns/net or /run/netns/<name>). fn must create its sockets synchronously: goroutines
// it starts run on other threads, in the agent's own namespace.
func Do(nsPath string, fn func() error) error {
	target, err := os.Open(nsPath)
	if err != nil {
		return fmt.Errorf("open network namespace: %w", err)
	}
	defer target.Close()

	type outcome struct{ err error }
	done := make(chan outcome, 1)
	go func() {
		runtime.LockOSThread()
		// The thread's own namespace rather than the process's, so that the thread goes back
		// exactly where it came from.
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			done <- outcome{fmt.Errorf("open current network namespace: %w", err)}
			return
		}
		defer orig.Close()
		if err := setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- outcome{fmt.Errorf("enter network namespace %s: %w", nsPath, err)}
			return
		}
		fnErr := fn()
		if err := setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Deliberately no UnlockOSThread: this goroutine returns locked, so the runtime
			// destroys the thread rather than reuse it in the wrong namespace.
			done <- outcome{errors.Join(fnErr, fmt.Errorf("return from network namespace %s: %w", nsPath, err))}
			return
		}
		runtime.UnlockOSThread()
		done <- outcome{fnErr}
	}()
	return (<-done).err
}

// Dialer dials TCP or UDP inside a network namespace. The zero Dialer field is usable.
type Dialer struct {
	// NSPath is the namespace file, e.g. /proc/<pid>/ns/net or /run/netns/<name>.
	NSPath string
	// Dialer holds timeouts and keep-alive settings. Its Resolver, if any, runs outside the
	// namespace; give IP literals to be sure which namespace resolves nothing.
	Dialer net.Dialer
}

// DialContext connects to address from inside the namespace. The connect itself happens on
// the namespace thread too, so a refused or unreachable address is reported here.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var conn net.Conn
	err := Do(d.NSPath, func() error {
		var err error
		conn, err = d.Dialer.DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		if conn != nil {
			conn.Close()
		}
		return nil, err
	}
	return conn, nil
}

// Dial is DialContext with a background context.
func (d *Dialer) Dial(network, address string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, address)
}

// Listen opens a listening socket inside the namespace at nsPath.
func Listen(ctx context.Context, nsPath, network, address string) (net.Listener, error) {
	var ln net.Listener
	err := Do(nsPath, func() error {
		var err error
		ln, err = (&net.ListenConfig{}).Listen(ctx, network, address)
		return err
	})
	if err != nil {
		if ln != nil {
			ln.Close()
		}
		return nil, err
	}
	return ln, nil
}
