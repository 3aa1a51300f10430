package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-mesh/kubectl-mesh/agent/discovery"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
)

// targetKinds are the TARGET forms perf run accepts, with kubectl's aliases.
var targetKinds = map[string]string{
	"deploy": "deploy", "deployment": "deploy", "deployments": "deploy", "deployment.apps": "deploy",
	"svc": "svc", "service": "svc", "services": "svc",
	"pod": "pod", "pods": "pod", "po": "pod",
}

// parseTarget reads TARGET (KIND/NAME) or, with no TARGET, a label selector.
func parseTarget(arg, selector string) (*perfrun.Target, error) {
	switch {
	case arg != "" && selector != "":
		return nil, errors.New("give either TARGET or -l SELECTOR, not both")
	case arg == "" && selector == "":
		return nil, errors.New("no target: give deploy/NAME, svc/NAME, pod/NAME or -l SELECTOR")
	case selector != "":
		if _, err := labels.Parse(selector); err != nil {
			return nil, fmt.Errorf("invalid -l: %w", err)
		}
		return &perfrun.Target{Kind: "selector", Selector: selector}, nil
	}
	kind, name, ok := strings.Cut(arg, "/")
	k := targetKinds[strings.ToLower(kind)]
	if !ok || k == "" || name == "" || strings.Contains(name, "/") {
		return nil, fmt.Errorf("invalid target %q: want deploy/NAME, svc/NAME or pod/NAME", arg)
	}
	return &perfrun.Target{Kind: k, Name: name}, nil
}

// targetPod is one pod to measure, with its node and the mesh its sidecar belongs to.
type targetPod struct {
	pod  *corev1.Pod
	node string
	mesh discovery.Mesh
}

// resolveTarget finds the target's pods and the app port to load, and checks each pod can
// be measured: running on a node, meshed, exposing the port. port is the --port flag (a
// number or a port name; empty picks the only one there is).
func resolveTarget(ctx context.Context, cs kubernetes.Interface, t *perfrun.Target, port string) ([]targetPod, error) {
	var sel labels.Selector
	var svc *corev1.Service
	switch t.Kind {
	case "deploy":
		d, err := cs.AppsV1().Deployments(t.Namespace).Get(ctx, t.Name, metav1.GetOptions{})
		if err != nil {
			return nil, notFound(err, "deployment", t.Namespace, t.Name)
		}
		if sel, err = metav1.LabelSelectorAsSelector(d.Spec.Selector); err != nil {
			return nil, fmt.Errorf("deployment %s/%s: %w", t.Namespace, t.Name, err)
		}
	case "svc":
		s, err := cs.CoreV1().Services(t.Namespace).Get(ctx, t.Name, metav1.GetOptions{})
		if err != nil {
			return nil, notFound(err, "service", t.Namespace, t.Name)
		}
		if len(s.Spec.Selector) == 0 {
			return nil, fmt.Errorf("service %s/%s has no selector, so no pods to measure", t.Namespace, t.Name)
		}
		svc = s
		sel = labels.SelectorFromSet(s.Spec.Selector)
	case "pod":
		p, err := cs.CoreV1().Pods(t.Namespace).Get(ctx, t.Name, metav1.GetOptions{})
		if err != nil {
			return nil, notFound(err, "pod", t.Namespace, t.Name)
		}
		return checkPods(t, []corev1.Pod{*p}, svc, port)
	default:
		var err error
		if sel, err = labels.Parse(t.Selector); err != nil {
			return nil, err
		}
	}
	t.Selector = sel.String()
	pods, err := cs.CoreV1().Pods(t.Namespace).List(ctx, metav1.ListOptions{LabelSelector: t.Selector})
	if err != nil {
		return nil, fmt.Errorf("listing pods for %s: %w", describeTarget(t), err)
	}
	if len(pods.Items) == 0 {
		return nil, fmt.Errorf("%s matches no pods in namespace %s", describeTarget(t), t.Namespace)
	}
	return checkPods(t, pods.Items, svc, port)
}

func notFound(err error, kind, ns, name string) error {
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("%s %q not found in namespace %s", kind, name, ns)
	}
	return fmt.Errorf("reading %s %s/%s: %w", kind, ns, name, err)
}

func describeTarget(t *perfrun.Target) string {
	if t.Kind == "selector" {
		return fmt.Sprintf("selector %q", t.Selector)
	}
	return t.Kind + "/" + t.Name
}

// checkPods keeps the running pods, sets t.Port, and fails when none can be measured; the
// reason for each pod left out is in the error.
func checkPods(t *perfrun.Target, pods []corev1.Pod, svc *corev1.Service, port string) ([]targetPod, error) {
	slices.SortFunc(pods, func(a, b corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	var out []targetPod
	var problems []string
	for i := range pods {
		p := &pods[i]
		if p.DeletionTimestamp != nil {
			problems = append(problems, fmt.Sprintf("pod %s is terminating", p.Name))
			continue
		}
		if p.Status.Phase != corev1.PodRunning || p.Spec.NodeName == "" {
			problems = append(problems, fmt.Sprintf("pod %s is %s, not running", p.Name, strings.ToLower(string(p.Status.Phase))))
			continue
		}
		rec, err := discovery.Recognize(p, nil)
		if errors.Is(err, discovery.ErrNoSidecar) {
			problems = append(problems, fmt.Sprintf("pod %s is not meshed (%v)", p.Name, err))
			continue
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("pod %s: %v", p.Name, err))
			continue
		}
		if rec.Mesh == "" {
			problems = append(problems, fmt.Sprintf("pod %s has no sidecar of a known mesh: it is not meshed", p.Name))
			continue
		}
		n, err := podPort(p, rec, svc, port)
		if err != nil {
			problems = append(problems, fmt.Sprintf("pod %s: %v", p.Name, err))
			continue
		}
		if t.Port != 0 && t.Port != n {
			problems = append(problems, fmt.Sprintf("pod %s: port %q is %d there, not %d as on the other pods", p.Name, port, n, t.Port))
			continue
		}
		t.Port = n
		out = append(out, targetPod{pod: p, node: p.Spec.NodeName, mesh: rec.Mesh})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no pod of %s can be measured:\n  %s", describeTarget(t), strings.Join(problems, "\n  "))
	}
	if len(problems) > 0 {
		// Measuring the rest is still useful; the caller prints these as warnings.
		return out, &partialTarget{problems: problems}
	}
	return out, nil
}

// partialTarget lists the pods of a target that cannot be measured when others can.
type partialTarget struct{ problems []string }

func (p *partialTarget) Error() string { return strings.Join(p.problems, "; ") }

// podPort resolves the port to load on one pod: the service's target port for svc/NAME,
// else a number or a name among the app containers' ports, else the only app port.
func podPort(p *corev1.Pod, rec discovery.Recognition, svc *corev1.Service, port string) (uint32, error) {
	var app []corev1.ContainerPort
	for _, c := range p.Spec.Containers {
		if c.Name != rec.Container {
			app = append(app, c.Ports...)
		}
	}
	if svc != nil {
		sp, err := servicePort(svc, port)
		if err != nil {
			return 0, err
		}
		if sp.TargetPort.Type == intstr.String {
			port = sp.TargetPort.StrVal
		} else {
			port = strconv.Itoa(int(sp.TargetPort.IntValue()))
			if sp.TargetPort.IntValue() == 0 {
				port = strconv.Itoa(int(sp.Port))
			}
		}
	}
	declared := func() string {
		var s []string
		for _, cp := range app {
			s = append(s, portName(cp))
		}
		if len(s) == 0 {
			return "none"
		}
		return strings.Join(s, ", ")
	}
	if port == "" {
		if len(app) != 1 {
			return 0, fmt.Errorf("give --port: the app containers declare %d ports (%s)", len(app), declared())
		}
		return uint32(app[0].ContainerPort), nil
	}
	n, err := strconv.ParseUint(port, 10, 16)
	for _, cp := range app {
		if (err == nil && uint64(cp.ContainerPort) == n) || cp.Name == port {
			return uint32(cp.ContainerPort), nil
		}
	}
	switch {
	case err != nil:
		return 0, fmt.Errorf("no app container port is named %q (ports: %s)", port, declared())
	case n == 0:
		return 0, fmt.Errorf("port %s is not a port number", port)
	case len(app) == 0:
		// Pods need not declare ports; the agent reports a port that refuses.
		return uint32(n), nil
	}
	return 0, fmt.Errorf("port %d is not exposed by the pod's app containers (ports: %s)", n, declared())
}

func portName(cp corev1.ContainerPort) string {
	if cp.Name != "" {
		return fmt.Sprintf("%d/%s", cp.ContainerPort, cp.Name)
	}
	return strconv.Itoa(int(cp.ContainerPort))
}

func servicePort(svc *corev1.Service, port string) (corev1.ServicePort, error) {
	if port == "" {
		if len(svc.Spec.Ports) != 1 {
			return corev1.ServicePort{}, fmt.Errorf("give --port: service %s has %d ports", svc.Name, len(svc.Spec.Ports))
		}
		return svc.Spec.Ports[0], nil
	}
	for _, sp := range svc.Spec.Ports {
		if sp.Name == port || strconv.Itoa(int(sp.Port)) == port {
			return sp, nil
		}
	}
	return corev1.ServicePort{}, fmt.Errorf("service %s has no port %q", svc.Name, port)
}
