package discovery

import (
	"reflect"
	"strings"
	"testing"
)

func hexID(c string) string { return strings.Repeat(c, 64) }

func TestScanFixture(t *testing.T) {
	got, err := Scanner{Root: "testdata/proc"}.Scan(nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]int{
		hexID("1"): {100, 101},
		hexID("2"): {102},
		hexID("7"): {110},
		hexID("3"): {200, 201, 202},
		hexID("4"): {300, 301},
		hexID("6"): {400, 401},
	}
	if len(got) != len(want) {
		t.Errorf("got %d containers, want %d", len(got), len(want))
	}
	for id, pids := range want {
		cp := got[id]
		if cp == nil {
			t.Errorf("container %s not found", id[:4])
			continue
		}
		var gp []int
		for _, p := range cp.Processes {
			gp = append(gp, p.PID)
		}
		if !reflect.DeepEqual(gp, pids) {
			t.Errorf("container %s: pids %v, want %v", id[:4], gp, pids)
		}
	}
	istio := got[hexID("1")]
	if istio.PodUID != "aaaaaaaa-0000-4000-8000-000000000001" || istio.QoS != "burstable" {
		t.Errorf("istio container ref %+v", istio.ContainerRef)
	}
	if istio.CgroupPaths["cpu"] != "/meshsim1/kubepods/burstable/pod"+istio.PodUID+"/"+hexID("1") || istio.CgroupPaths[Unified] != "/" {
		t.Errorf("cgroup paths %v", istio.CgroupPaths)
	}
	envoy := istio.Processes[1]
	if envoy.Comm != "envoy" || envoy.UID != 1337 || envoy.StartTime != 123456 ||
		!reflect.DeepEqual(envoy.Cmdline, []string{"/usr/local/bin/envoy", "-c", "etc/istio/proxy/envoy-rev.json", "--concurrency", "2"}) {
		t.Errorf("envoy process %+v", envoy)
	}
	if w := got[hexID("3")].Processes[1]; !reflect.DeepEqual(w.Cmdline, []string{"nginx: worker process"}) || w.UID != 1337 {
		t.Errorf("nginx worker %+v", w)
	}

	only, err := Scanner{Root: "testdata/proc"}.Scan(func(id string) bool { return id == hexID("4") })
	if err != nil {
		t.Fatal(err)
	}
	if len(only) != 1 || only[hexID("4")] == nil {
		t.Errorf("filtered scan returned %d containers", len(only))
	}
}

func TestScanMissingRoot(t *testing.T) {
	if _, err := (Scanner{Root: "testdata/nonexistent"}).Scan(nil); err == nil {
		t.Fatal("scan of a missing procfs succeeded")
	}
}

func TestStatusUID(t *testing.T) {
	if _, err := statusUID([]byte("Name:\tx\n")); err == nil {
		t.Error("status without Uid accepted")
	}
	if u, err := statusUID([]byte("Uid:\t0\t1337\t0\t1337\n")); err != nil || u != 1337 {
		t.Errorf("effective uid = %d, %v", u, err)
	}
}
