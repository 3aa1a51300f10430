// Package podtest builds throwaway pods for root tests on this machine: a network namespace
// joined to the host by a veth, with addresses in 198.18.0.0/15 and Istio's inbound redirect
// (app port → proxy port), and Debian's nginx as its sidecar under the proxy UID. Everything
// is removed when the test ends, failed or not.
package podtest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The pod's ports and proxy UID, Istio's.
const (
	AppPort   = 8080
	ProxyPort = 15006
	ProxyUID  = 1337
)

// Pod is a network namespace with a veth to the host.
type Pod struct {
	Name, NSPath   string
	HostIf, PodIf  string
	HostIP, PodIP  string
	firstO, blocks int
}

var seq atomic.Int32

// Run runs a command and fails the test with its output if it fails.
func Run(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// New creates a pod named after prefix (a few letters: interface names are short) with a /30
// in 198.18.<third>.0 for third in [firstOctet, firstOctet+blocks/64), so that test packages
// running at once keep to ranges of their own. (The simulated cluster uses 198.18.64.0/24 for
// services, 198.18.128.0/17 for pods and node bridges.)
func New(t testing.TB, prefix string, firstOctet, blocks int) *Pod {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root: creates network namespaces, veths and iptables rules")
	}
	n := seq.Add(1)
	p := &Pod{Name: fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), n), firstO: firstOctet, blocks: blocks}
	p.NSPath = "/run/netns/" + p.Name
	tag := fmt.Sprintf("%x%x", os.Getpid()&0xfffff, n)
	p.HostIf, p.PodIf = prefix+tag+"h", prefix+tag+"p"
	p.HostIP, p.PodIP = p.freeSubnet(t)

	Run(t, "ip", "netns", "add", p.Name)
	t.Cleanup(func() {
		// Deleting the namespace destroys the pod end of the veth and with it the host end
		// and its qdisc; delete the host end explicitly too in case the move never happened.
		exec.Command("ip", "link", "del", p.HostIf).Run()
		if out, err := exec.Command("ip", "netns", "del", p.Name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", p.Name, err, out)
		}
	})
	Run(t, "ip", "link", "add", p.HostIf, "type", "veth", "peer", "name", p.PodIf)
	Run(t, "ip", "link", "set", p.PodIf, "netns", p.Name)
	Run(t, "ip", "addr", "add", p.HostIP+"/30", "dev", p.HostIf)
	Run(t, "ip", "link", "set", p.HostIf, "up")
	Run(t, "ip", "-n", p.Name, "addr", "add", p.PodIP+"/30", "dev", p.PodIf)
	Run(t, "ip", "-n", p.Name, "link", "set", p.PodIf, "up")
	Run(t, "ip", "-n", p.Name, "link", "set", "lo", "up")
	Run(t, "ip", "netns", "exec", p.Name, "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp",
		"--dport", fmt.Sprint(AppPort), "-j", "REDIRECT", "--to-ports", fmt.Sprint(ProxyPort))
	return p
}

// freeSubnet picks a /30 of the pod's range that no local address or route uses.
func (p *Pod) freeSubnet(t testing.TB) (hostIP, podIP string) {
	t.Helper()
	routes, err := exec.Command("ip", "-o", "-4", "route", "show", "table", "all").CombinedOutput()
	if err != nil {
		t.Fatalf("ip route: %v: %s", err, routes)
	}
	addrs, err := exec.Command("ip", "-o", "-4", "addr").CombinedOutput()
	if err != nil {
		t.Fatalf("ip addr: %v: %s", err, addrs)
	}
	used := string(routes) + string(addrs)
	start := (os.Getpid()*61 + int(seq.Add(1))*7) % p.blocks
	for i := range p.blocks {
		b := (start + i) % p.blocks
		prefix := fmt.Sprintf("198.18.%d.", p.firstO+b/64)
		y := (b % 64) * 4
		clash := false
		for k := range 4 {
			if strings.Contains(used, fmt.Sprintf("%s%d/", prefix, y+k)) || strings.Contains(used, fmt.Sprintf("%s%d ", prefix, y+k)) {
				clash = true
			}
		}
		if !clash {
			return fmt.Sprint(prefix, y+1), fmt.Sprint(prefix, y+2)
		}
	}
	t.Fatalf("no free /30 in 198.18.%d.0 and the %d blocks after it", p.firstO, p.blocks)
	return "", ""
}

// StartNginx runs Debian's nginx in the pod as a reverse proxy from ProxyPort to the app on
// 127.0.0.1:AppPort, under ProxyUID, with its files in a private temp folder. wrap prefixes
// the command (e.g. chrt). It returns once nginx accepts through the redirect, with the
// master's PID first, then its workers'; the test's end stops it, by PID.
func StartNginx(t testing.TB, p *Pod, wrap ...string) []int {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		t.Log("nginx missing; installing Debian's")
		if out, err := exec.Command("apt-get", "install", "-y", "--no-install-recommends", "nginx").CombinedOutput(); err != nil {
			t.Fatalf("apt-get install nginx: %v: %s", err, out)
		}
		if bin, err = exec.LookPath("nginx"); err != nil {
			t.Fatal(err)
		}
	}
	dir, err := os.MkdirTemp("", "podtest-nginx-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, ProxyUID, ProxyUID); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  upstream app {
    server 127.0.0.1:%[2]d;
    keepalive 16;
  }
  server {
    listen %[3]d;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`, dir, AppPort, ProxyPort)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append(append([]string{}, wrap...), "nsenter", "--net="+p.NSPath,
		"--setuid", fmt.Sprint(ProxyUID), "--setgid", fmt.Sprint(ProxyUID),
		"--", bin, "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", confPath, "-g", "daemon off;")
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	master := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { stop(t, master, exited) })

	// Ready when a connection to the app port lands on nginx through the redirect (no request
	// is sent: tests count the app's requests) and its worker exists.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(p.PodIP, fmt.Sprint(AppPort)), time.Second)
		if err == nil {
			c.Close()
			if w := ChildPIDs(master); len(w) > 0 {
				checkUID(t, master)
				return append([]int{master}, w...)
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("nginx exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx not answering through the redirect: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func checkUID(t testing.TB, pid int) {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("\nUid:\t%d\t%d\t%d\t%d\n", ProxyUID, ProxyUID, ProxyUID, ProxyUID); !strings.Contains(string(status), want) {
		t.Fatalf("nginx is not running as UID %d:\n%s", ProxyUID, status)
	}
}

// stop asks the master to stop; if it hangs, kills it and its workers.
func stop(t testing.TB, master int, exited chan error) {
	workers := ChildPIDs(master)
	syscall.Kill(master, syscall.SIGTERM)
	select {
	case <-exited:
		return
	case <-time.After(10 * time.Second):
	}
	t.Errorf("nginx %d ignored SIGTERM; killing it and its workers %v", master, workers)
	syscall.Kill(master, syscall.SIGKILL)
	for _, w := range workers {
		syscall.Kill(w, syscall.SIGKILL)
	}
	<-exited
}

// ChildPIDs lists a process's children.
func ChildPIDs(pid int) []int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}
