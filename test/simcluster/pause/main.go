// Command pause is the pod sandbox process of the simulated cluster's real node. No image can be
// pulled there, so containerd's sandbox_image is built from this binary: it holds the pod's
// namespaces open and exits on the signal the runtime sends when the sandbox is stopped.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			return
		}
		// As PID 1 of the pod the sandbox inherits orphaned processes; reaping them keeps the
		// pod from filling with zombies, the other duty of the upstream pause image.
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
