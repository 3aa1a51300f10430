// Package discovery finds the service-mesh sidecars on this node: which pods are meshed,
// which container in each is the sidecar, which processes run in it (found through their
// cgroups in procfs), which of them is the proxy, and the ports and UID the mesh's traffic
// interception is built around.
package discovery

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// Unified is the key CgroupPaths uses for the cgroup v2 hierarchy ("0::<path>" lines); v1
// hierarchies are keyed by their controller names ("cpu", "memory", "name=systemd", ...).
const Unified = "unified"

// CgroupLine is one line of /proc/<pid>/cgroup: "hierarchy-ID:controller-list:path".
type CgroupLine struct {
	Hierarchy   int
	Controllers []string
	// Path is relative to the root of the hierarchy as seen from the reader's cgroup
	// namespace; outside it the kernel prefixes "/..", so it is kept as read, not cleaned.
	Path string
}

// ParseProcCgroup reads the lines of a /proc/<pid>/cgroup file. It takes v1 lines
// ("4:cpu,cpuacct:/path"), the v2 line ("0::/path") and both together (hybrid hosts).
func ParseProcCgroup(r io.Reader) ([]CgroupLine, error) {
	var lines []CgroupLine
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		parts := strings.SplitN(text, ":", 3)
		if len(parts) != 3 {
			return nil, fmt.Errorf("malformed cgroup line %q", text)
		}
		id, err := strconv.Atoi(parts[0])
		if err != nil {
			return nil, fmt.Errorf("malformed cgroup hierarchy id in %q", text)
		}
		var ctrls []string
		if parts[1] != "" {
			ctrls = strings.Split(parts[1], ",")
		}
		lines = append(lines, CgroupLine{Hierarchy: id, Controllers: ctrls, Path: parts[2]})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return lines, nil
}

// CgroupPaths maps each controller (or Unified) to its path.
func CgroupPaths(lines []CgroupLine) map[string]string {
	m := make(map[string]string, len(lines))
	for _, l := range lines {
		if l.Hierarchy == 0 && len(l.Controllers) == 0 {
			m[Unified] = l.Path
			continue
		}
		for _, c := range l.Controllers {
			m[c] = l.Path
		}
	}
	return m
}

// ContainerRef is what a cgroup path says about the container a process runs in.
type ContainerRef struct {
	// ContainerID is the runtime's 64-hex container ID, as in the pod's container statuses
	// once their "containerd://" style prefix is stripped.
	ContainerID string
	// Runtime is "containerd", "cri-o" or "docker" when the path names it (systemd driver
	// scopes, nested docker), empty for the cgroupfs driver's bare IDs.
	Runtime string
	// PodUID is set when the container sits below a kubelet pod cgroup.
	PodUID string
	// QoS is "guaranteed", "burstable" or "besteffort" for kubelet pods.
	QoS string
	// Path is the cgroup path the reference was taken from.
	Path string
}

var (
	hex64 = `([0-9a-f]{64})`
	// One path component each. Order matters only in that the first match in the list is
	// used for a component; the deepest component that matches any of them wins.
	containerComponents = []struct {
		re      *regexp.Regexp
		runtime string
	}{
		{regexp.MustCompile(`^cri-containerd-` + hex64 + `\.scope$`), "containerd"},
		// containerd's cgroupfs form when handed a systemd-style cgroupsPath.
		{regexp.MustCompile(`:cri-containerd:` + hex64 + `$`), "containerd"},
		{regexp.MustCompile(`^crio-` + hex64 + `(?:\.scope)?$`), "cri-o"},
		{regexp.MustCompile(`^docker-` + hex64 + `\.scope$`), "docker"},
		{regexp.MustCompile(`^` + hex64 + `$`), ""},
	}
	// kubelet pod cgroups: "pod<uid>" (cgroupfs) or
	// "kubepods[-<qos>]-pod<uid_with_underscores>.slice" (systemd; "kubelet-kubepods-..."
	// under kind). Static pods have a 32-hex UID without dashes, hence the loose UID class.
	podComponent = regexp.MustCompile(`^(?:(?:kubelet-)?kubepods(?:-(besteffort|burstable))?-)?pod([0-9a-f][0-9a-f_-]{15,})(?:\.slice)?$`)
	qosComponent = regexp.MustCompile(`^(?:(?:kubelet-)?kubepods-)?(besteffort|burstable)(?:\.slice)?$`)
)

// ParseContainerCgroupPath extracts the container (and pod, when kubelet made the cgroup)
// from a cgroup path. The deepest component that names a container wins, so nested
// layouts such as kind's "/docker/<id>/kubelet.slice/..." resolve to the inner
// container. It reports false for paths with no container: system services, pod-level
// cgroups, CRI-O's conmon scopes.
func ParseContainerCgroupPath(p string) (ContainerRef, bool) {
	comps := strings.Split(strings.Trim(p, "/"), "/")
	for i := len(comps) - 1; i >= 0; i-- {
		for _, cc := range containerComponents {
			m := cc.re.FindStringSubmatch(comps[i])
			if m == nil {
				continue
			}
			ref := ContainerRef{ContainerID: m[1], Runtime: cc.runtime, Path: p}
			if ref.Runtime == "" && i > 0 && comps[i-1] == "docker" {
				ref.Runtime = "docker"
			}
			podFromAncestors(&ref, comps[:i])
			return ref, true
		}
	}
	return ContainerRef{}, false
}

// podFromAncestors fills the pod UID and QoS class from the pod cgroup directly above the
// container, provided it is itself below a kubepods cgroup (so a random "pod..." directory
// elsewhere is not taken for one).
func podFromAncestors(ref *ContainerRef, anc []string) {
	if len(anc) == 0 {
		return
	}
	m := podComponent.FindStringSubmatch(anc[len(anc)-1])
	if m == nil {
		return
	}
	kube := false
	for _, c := range anc[:len(anc)-1] {
		c = strings.TrimPrefix(c, "kubelet-") // kind's nested kubelet names its slices kubelet-kubepods-*
		if c == "kubepods" || strings.HasPrefix(c, "kubepods.") || strings.HasPrefix(c, "kubepods-") {
			kube = true
			break
		}
	}
	if !kube {
		return
	}
	ref.PodUID = strings.ReplaceAll(m[2], "_", "-")
	switch {
	case m[1] != "":
		ref.QoS = m[1]
	case len(anc) >= 2 && qosComponent.MatchString(anc[len(anc)-2]):
		ref.QoS = qosComponent.FindStringSubmatch(anc[len(anc)-2])[1]
	default:
		ref.QoS = "guaranteed"
	}
}

// controllerPreference orders the hierarchies a container is looked up in: the unified one
// first (on v2 hosts it is the only one), then the v1 controllers kubelet always places
// containers under. On hybrid hosts the unified line may be "/" or a systemd path while the
// cpu line holds the container, which is why every line is tried.
var controllerPreference = []string{Unified, "cpu", "cpuacct", "memory", "pids", "name=systemd"}

// ContainerFromCgroups finds the container a process belongs to from all its cgroup lines.
func ContainerFromCgroups(lines []CgroupLine) (ContainerRef, bool) {
	paths := CgroupPaths(lines)
	seen := make(map[string]bool, len(paths))
	try := func(key string) (ContainerRef, bool) {
		p, ok := paths[key]
		if !ok || seen[p] {
			return ContainerRef{}, false
		}
		seen[p] = true
		return ParseContainerCgroupPath(p)
	}
	for _, key := range controllerPreference {
		if ref, ok := try(key); ok {
			return ref, true
		}
	}
	for _, l := range lines {
		for _, c := range l.Controllers {
			if ref, ok := try(c); ok {
				return ref, true
			}
		}
	}
	return ContainerRef{}, false
}

// StatusContainerID splits a container status ID ("containerd://<id>", "cri-o://<id>",
// "docker://<id>") into runtime and ID. An empty status ID (container not started) gives
// empty strings.
func StatusContainerID(s string) (runtime, id string) {
	if i := strings.Index(s, "://"); i >= 0 {
		return s[:i], s[i+3:]
	}
	return "", s
}
