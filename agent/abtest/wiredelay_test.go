package abtest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kubectl-mesh/kubectl-mesh/agent/netns"
	"github.com/kubectl-mesh/kubectl-mesh/agent/netns/podtest"
)

// This kernel has no netem (CONFIG_NET_SCH_NETEM is off; only fifo, htb, tbf and ingress
// qdiscs are built in), so a fixed delay on the pod's network path is made with netfilter's
// userspace queue instead: packets arriving on the pod's end of the veth are queued in the
// kernel, and a verdict releases each one a fixed time after it arrived. Like netem on the host
// end of the veth, this delays host → pod packets of the through path and nothing on the
// pod's loopback.

// nfnetlink_queue protocol (include/uapi/linux/netfilter/nfnetlink_queue.h).
const (
	nfnlSubsysQueue   = 3
	nfqnlMsgPacket    = 0
	nfqnlMsgVerdict   = 1
	nfqnlMsgConfig    = 2
	nfqaPacketHdr     = 1
	nfqaVerdictHdr    = 2
	nfqaCfgCmd        = 1
	nfqaCfgParams     = 2
	nfqnlCfgCmdBind   = 1
	nfqnlCopyMeta     = 1
	nfAccept          = 1
	wireDelayQueueNum = 7
)

type queuedPacket struct {
	id      uint32
	arrived time.Time
}

// wireDelay holds every packet of one netfilter queue for a fixed delay.
type wireDelay struct {
	fd      int
	delay   time.Duration
	stop    atomic.Bool
	pending chan queuedPacket
	reader  sync.WaitGroup
	holder  sync.WaitGroup
	held    atomic.Int64
}

// setWireDelay queues TCP packets entering the pod from its veth and releases them after delay.
func (p *testPod) setWireDelay(t *testing.T, delay time.Duration) *wireDelay {
	t.Helper()
	w := &wireDelay{delay: delay, pending: make(chan queuedPacket, 65536)}
	// The queue's netlink socket must live in the pod's namespace, where the rule is.
	err := netns.Do(p.NSPath, func() error {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		if err != nil {
			return err
		}
		w.fd = fd
		return unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
	})
	if err != nil {
		if w.fd > 0 {
			unix.Close(w.fd)
		}
		t.Fatalf("netfilter queue socket: %v", err)
	}
	// Receives time out so that the reader notices stop.
	tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
	if err := unix.SetsockoptTimeval(w.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	bind := []byte{nfqnlCfgCmdBind, 0, 0, unix.AF_INET}
	params := []byte{0, 0, 0, 0, nfqnlCopyMeta} // copy_range (be32) 0, copy_mode
	for _, attr := range [][]byte{nlattr(nfqaCfgCmd, bind), nlattr(nfqaCfgParams, params)} {
		if err := w.request(nfqnlMsgConfig, unix.NLM_F_ACK, attr); err != nil {
			unix.Close(w.fd)
			t.Fatalf("configure netfilter queue: %v", err)
		}
	}
	w.reader.Add(1)
	w.holder.Add(1)
	go w.read()
	go w.release()
	// iptables-legacy's xt NFQUEUE target: this kernel lacks nft's native queue expression.
	rule := []string{"PREROUTING", "-i", p.PodIf, "-p", "tcp", "-j", "NFQUEUE", "--queue-num", fmt.Sprint(wireDelayQueueNum)}
	podtest.Run(t, append([]string{"ip", "netns", "exec", p.Name, "iptables-legacy", "-t", "mangle", "-A"}, rule...)...)
	t.Cleanup(func() { w.close(p, rule) })
	return w
}

func (w *wireDelay) close(p *testPod, rule []string) {
	// Remove the rule first, so that nothing new is queued, then release what is held.
	del := append([]string{"netns", "exec", p.Name, "iptables-legacy", "-t", "mangle", "-D"}, rule...)
	exec.Command("ip", del...).Run()
	w.stop.Store(true)
	w.reader.Wait() // notices stop within one receive timeout
	close(w.pending)
	w.holder.Wait()
	unix.Close(w.fd)
}

func nlattr(typ uint16, payload []byte) []byte {
	b := make([]byte, 4, 4+len(payload)+3)
	binary.NativeEndian.PutUint16(b[0:], uint16(4+len(payload)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

var nlSeq atomic.Uint32

// request sends one nfnetlink_queue message; with NLM_F_ACK it waits for the kernel's answer.
func (w *wireDelay) request(msg uint16, flags uint16, attrs ...[]byte) error {
	body := []byte{unix.AF_UNSPEC, 0, 0, 0}
	binary.BigEndian.PutUint16(body[2:], wireDelayQueueNum)
	for _, a := range attrs {
		body = append(body, a...)
	}
	seq := nlSeq.Add(1)
	hdr := make([]byte, unix.NLMSG_HDRLEN)
	binary.NativeEndian.PutUint32(hdr[0:], uint32(len(hdr)+len(body)))
	binary.NativeEndian.PutUint16(hdr[4:], nfnlSubsysQueue<<8|msg)
	binary.NativeEndian.PutUint16(hdr[6:], unix.NLM_F_REQUEST|flags)
	binary.NativeEndian.PutUint32(hdr[8:], seq)
	if err := unix.Sendto(w.fd, append(hdr, body...), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	if flags&unix.NLM_F_ACK == 0 {
		return nil
	}
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(w.fd, buf, 0)
		if err != nil {
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Seq != seq || m.Header.Type != unix.NLMSG_ERROR {
				continue
			}
			if errno := int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
				return unix.Errno(-errno)
			}
			return nil
		}
	}
}

func (w *wireDelay) read() {
	defer w.reader.Done()
	buf := make([]byte, 65536)
	for !w.stop.Load() {
		n, _, err := unix.Recvfrom(w.fd, buf, 0)
		now := time.Now()
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) || errors.Is(err, unix.ENOBUFS) {
				continue
			}
			return
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for _, m := range msgs {
			if m.Header.Type != nfnlSubsysQueue<<8|nfqnlMsgPacket || len(m.Data) < 4 {
				continue
			}
			if id, ok := packetID(m.Data[4:]); ok {
				w.pending <- queuedPacket{id: id, arrived: now}
			}
		}
	}
}

// packetID finds NFQA_PACKET_HDR among a packet message's attributes.
func packetID(b []byte) (uint32, bool) {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:]))
		typ := binary.NativeEndian.Uint16(b[2:]) & 0x3fff // without the nested/byte-order flags
		if l < 4 || l > len(b) {
			return 0, false
		}
		if typ == nfqaPacketHdr && l >= 8 {
			return binary.BigEndian.Uint32(b[4:]), true
		}
		b = b[min((l+3)&^3, len(b)):]
	}
	return 0, false
}

// release lets packets go in arrival order, each delay after it arrived.
func (w *wireDelay) release() {
	defer w.holder.Done()
	for pkt := range w.pending {
		preciseWait(pkt.arrived.Add(w.delay))
		verdict := make([]byte, 8)
		binary.BigEndian.PutUint32(verdict[0:], nfAccept)
		binary.BigEndian.PutUint32(verdict[4:], pkt.id)
		if err := w.request(nfqnlMsgVerdict, 0, nlattr(nfqaVerdictHdr, verdict)); err == nil {
			w.held.Add(1)
		}
	}
}
