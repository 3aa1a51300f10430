package discovery

import (
	"strings"
	"testing"
)

const (
	idA             = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	idB             = "73051af271105c07e1f493b34856a77e665e3b0b4fc72f76c807dfbffeb881bd"
	idKind          = "b43d92bf1e5c6f78bb9b7bc6f40721280299855ba692092716e3a1b6c0b86f3f"
	uidA            = "8712f785-1a3e-41ec-a00b-e2dcc77431cb"
	uidAUnderscored = "8712f785_1a3e_41ec_a00b_e2dcc77431cb"
	// Static pods' UIDs are the hash of their manifest: 32 hex, no dashes.
	uidStatic = "5f1a1fd1c2b0a4f0e7d2c9b8a7f6e5d4"
)

func TestParseContainerCgroupPath(t *testing.T) {
	tests := []struct {
		name, path            string
		ok                    bool
		id, runtime, pod, qos string
	}{
		{"cgroupfs besteffort", "/kubepods/besteffort/pod" + uidA + "/" + idA, true, idA, "", uidA, "besteffort"},
		{"cgroupfs burstable", "/kubepods/burstable/pod" + uidA + "/" + idB, true, idB, "", uidA, "burstable"},
		{"cgroupfs guaranteed", "/kubepods/pod" + uidA + "/" + idA, true, idA, "", uidA, "guaranteed"},
		{"cgroupfs crio", "/kubepods/burstable/pod" + uidA + "/crio-" + idA, true, idA, "cri-o", uidA, "burstable"},
		{"systemd containerd burstable",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidAUnderscored + ".slice/cri-containerd-" + idA + ".scope",
			true, idA, "containerd", uidA, "burstable"},
		{"systemd crio besteffort",
			"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidAUnderscored + ".slice/crio-" + idB + ".scope",
			true, idB, "cri-o", uidA, "besteffort"},
		{"systemd docker besteffort (coroot fixture shape)",
			"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidAUnderscored + ".slice/docker-" + idB + ".scope",
			true, idB, "docker", uidA, "besteffort"},
		{"systemd guaranteed",
			"/kubepods.slice/kubepods-pod" + uidAUnderscored + ".slice/cri-containerd-" + idA + ".scope",
			true, idA, "containerd", uidA, "guaranteed"},
		{"kubelet cgroup root prefix (simulated cluster)", "/meshsim3/kubepods/besteffort/pod" + uidA + "/" + idA, true, idA, "", uidA, "besteffort"},
		{"kind node nested in docker: deepest wins",
			"/docker/" + idKind + "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + uidAUnderscored + ".slice/cri-containerd-" + idA + ".scope",
			true, idA, "containerd", uidA, "besteffort"},
		{"outside the reader's cgroup namespace", "/../../kubepods-burstable-pod" + uidAUnderscored + ".slice/cri-containerd-" + idA + ".scope",
			true, idA, "containerd", "", ""},
		{"static pod UID", "/kubepods/burstable/pod" + uidStatic + "/" + idB, true, idB, "", uidStatic, "burstable"},
		{"containerd cgroupfs with systemd-style name",
			"/kubepods-besteffort-pod" + uidAUnderscored + ".slice:cri-containerd:" + idA, true, idA, "containerd", "", ""},
		{"plain docker container", "/system.slice/docker-" + idB + ".scope", true, idB, "docker", "", ""},
		{"docker cgroupfs", "/docker/" + idB, true, idB, "docker", "", ""},
		// Negatives.
		{"systemd service", "/system.slice/containerd.service", false, "", "", "", ""},
		{"user session", "/user.slice/user-0.slice/session-1.scope", false, "", "", "", ""},
		{"root", "/", false, "", "", "", ""},
		{"pod cgroup without container (cgroupfs)", "/kubepods/burstable/pod" + uidA, false, "", "", "", ""},
		{"pod slice without container (systemd)", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidAUnderscored + ".slice", false, "", "", "", ""},
		{"crio conmon is not the container", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidAUnderscored + ".slice/crio-conmon-" + idA + ".scope", false, "", "", "", ""},
		{"qos slice only", "/kubepods.slice/kubepods-besteffort.slice", false, "", "", "", ""},
		{"short hex is not an ID", "/kubepods/besteffort/pod" + uidA + "/" + idA[:63], false, "", "", "", ""},
	}
	if len(tests) < 12 {
		t.Fatal("table too small")
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ref, ok := ParseContainerCgroupPath(tt.path)
			if ok != tt.ok {
				t.Fatalf("ok = %v, want %v (ref %+v)", ok, tt.ok, ref)
			}
			if !ok {
				return
			}
			if ref.ContainerID != tt.id || ref.Runtime != tt.runtime || ref.PodUID != tt.pod || ref.QoS != tt.qos {
				t.Errorf("got id=%s runtime=%q pod=%q qos=%q, want id=%s runtime=%q pod=%q qos=%q",
					ref.ContainerID, ref.Runtime, ref.PodUID, ref.QoS, tt.id, tt.runtime, tt.pod, tt.qos)
			}
		})
	}
}

func TestNestedKubepodsKeepsPod(t *testing.T) {
	p := "/docker/" + idKind + "/kubepods/besteffort/pod" + uidA + "/" + idA
	ref, ok := ParseContainerCgroupPath(p)
	if !ok || ref.ContainerID != idA || ref.PodUID != uidA {
		t.Fatalf("got %+v, %v", ref, ok)
	}
}

func TestProcCgroupLayouts(t *testing.T) {
	k8s := "/kubepods/burstable/pod" + uidA + "/" + idA
	sysd := "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidAUnderscored + ".slice/cri-containerd-" + idA + ".scope"
	tests := []struct {
		name, file string
		wantCPU    string
	}{
		{"v2", "0::" + sysd + "\n", sysd},
		{"v1", "12:memory:" + k8s + "\n4:cpu,cpuacct:" + k8s + "\n1:name=systemd:" + k8s + "\n", k8s},
		// Hybrid: the unified line is systemd's view and holds no container.
		{"hybrid", "9:name=systemd:/\n2:cpuacct:" + k8s + "\n1:cpu:" + k8s + "\n0::/\n", k8s},
		// Hybrid with systemd driver: the unified line holds the scope too.
		{"hybrid systemd", "4:memory:" + sysd + "\n3:cpu,cpuacct:" + sysd + "\n1:name=systemd:" + sysd + "\n0::" + sysd + "\n", sysd},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lines, err := ParseProcCgroup(strings.NewReader(tt.file))
			if err != nil {
				t.Fatal(err)
			}
			ref, ok := ContainerFromCgroups(lines)
			if !ok || ref.ContainerID != idA || ref.PodUID != uidA {
				t.Fatalf("got %+v, %v", ref, ok)
			}
			s := Sidecar{CgroupPaths: CgroupPaths(lines)}
			if got := s.CgroupPath(); got != tt.wantCPU {
				t.Errorf("CgroupPath = %q, want %q", got, tt.wantCPU)
			}
		})
	}
	if _, err := ParseProcCgroup(strings.NewReader("garbage\n")); err == nil {
		t.Error("malformed line accepted")
	}
	lines, _ := ParseProcCgroup(strings.NewReader("0::/system.slice/ssh.service\n"))
	if ref, ok := ContainerFromCgroups(lines); ok {
		t.Errorf("service taken for a container: %+v", ref)
	}
}

func TestStatusContainerID(t *testing.T) {
	for _, tt := range []struct{ in, rt, id string }{
		{"containerd://" + idA, "containerd", idA},
		{"cri-o://" + idB, "cri-o", idB},
		{"docker://" + idA, "docker", idA},
		{"", "", ""},
	} {
		rt, id := StatusContainerID(tt.in)
		if rt != tt.rt || id != tt.id {
			t.Errorf("StatusContainerID(%q) = %q, %q", tt.in, rt, id)
		}
	}
}
