// Package agents finds the mesh-agent pod of every node and calls the agents in parallel.
package agents

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
)

// AgentSelector selects agent pods (the label every kubectl-mesh agent object carries).
const AgentSelector = "app.kubernetes.io/name=mesh-agent"

// listPageSize keeps each List response bounded on large clusters; the API server
// serves later pages from the same consistent snapshot through the continue token.
const listPageSize = 500

// Target is one node and the agent pod that serves it.
type Target struct {
	Node string
	// Pod is the node's agent pod, nil when it has none.
	Pod *corev1.Pod
	// Problem says why the agent cannot be used; empty when the pod is running and ready.
	Problem string
}

// Discover returns one Target per node selected by nodeSelector (nil selects all), sorted
// by node name, each paired with the agent pod in namespace scheduled to it.
//
// Agent pods bound to nodes outside the selection are ignored: with a selector that is
// the point, and without one such a pod sits on a node that was just deleted, which the
// DaemonSet controller cleans up by itself. A pending pod that names a node through its
// node affinity (how the DaemonSet controller targets nodes) explains a node that has no
// running agent.
func Discover(ctx context.Context, cs kubernetes.Interface, namespace string, nodeSelector labels.Selector) ([]Target, error) {
	nodeOpts := metav1.ListOptions{}
	if nodeSelector != nil && !nodeSelector.Empty() {
		nodeOpts.LabelSelector = nodeSelector.String()
	}
	var nodes []string
	err := listAll(ctx, nodeOpts, func(opts metav1.ListOptions) (string, error) {
		list, err := cs.CoreV1().Nodes().List(ctx, opts)
		if err != nil {
			return "", err
		}
		for i := range list.Items {
			nodes = append(nodes, list.Items[i].Name)
		}
		return list.Continue, nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}

	bound := make(map[string]*corev1.Pod, len(nodes))
	pending := map[string]*corev1.Pod{}
	err = listAll(ctx, metav1.ListOptions{LabelSelector: AgentSelector}, func(opts metav1.ListOptions) (string, error) {
		list, err := cs.CoreV1().Pods(namespace).List(ctx, opts)
		if err != nil {
			return "", err
		}
		for i := range list.Items {
			pod := &list.Items[i]
			if node := pod.Spec.NodeName; node != "" {
				if better(pod, bound[node]) {
					bound[node] = pod
				}
				continue
			}
			if node := affinityNode(pod); node != "" && better(pod, pending[node]) {
				pending[node] = pod
			}
		}
		return list.Continue, nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing agent pods in namespace %s: %w", namespace, err)
	}

	sort.Strings(nodes)
	targets := make([]Target, 0, len(nodes))
	for _, node := range nodes {
		t := Target{Node: node}
		switch pod := bound[node]; {
		case pod != nil:
			t.Pod = pod
			t.Problem = PodProblem(pod)
		case pending[node] != nil:
			t.Pod = pending[node]
			t.Problem = PodProblem(pending[node])
		default:
			t.Problem = "no agent pod"
		}
		targets = append(targets, t)
	}
	return targets, nil
}

// listAll pages through a List. A continue token that expired mid-way (410 Gone) is an
// error rather than a silent restart: a partial picture of the cluster would be wrong.
func listAll(ctx context.Context, opts metav1.ListOptions, page func(metav1.ListOptions) (string, error)) error {
	opts.Limit = listPageSize
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		next, err := page(opts)
		if err != nil {
			return err
		}
		if next == "" {
			return nil
		}
		opts.Continue = next
	}
}

// better says whether pod should stand for its node instead of cur. During a rolling
// update a node briefly has two agent pods; the usable one, else the newer, wins.
func better(pod, cur *corev1.Pod) bool {
	if cur == nil {
		return true
	}
	pu, cu := PodProblem(pod) == "", PodProblem(cur) == ""
	if pu != cu {
		return pu
	}
	if pod.DeletionTimestamp == nil != (cur.DeletionTimestamp == nil) {
		return pod.DeletionTimestamp == nil
	}
	return cur.CreationTimestamp.Before(&pod.CreationTimestamp)
}

// affinityNode is the node a not-yet-bound DaemonSet pod is meant for: the DaemonSet
// controller pins each pod with a required node affinity on metadata.name.
func affinityNode(pod *corev1.Pod) string {
	a := pod.Spec.Affinity
	if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return ""
	}
	for _, term := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
		for _, f := range term.MatchFields {
			if f.Key == "metadata.name" && f.Operator == corev1.NodeSelectorOpIn && len(f.Values) == 1 {
				return f.Values[0]
			}
		}
	}
	return ""
}

// PodProblem says in a few words why pod cannot serve as an agent, or returns "" when it
// is running and ready. The checks follow Sonobuoy's IsPodFailing, ordered so the most
// specific cause wins: a crash loop explains "not ready" better than "not ready" does.
func PodProblem(pod *corev1.Pod) string {
	if pod == nil {
		return "no agent pod"
	}
	if pod.DeletionTimestamp != nil {
		return "terminating"
	}
	switch pod.Status.Phase {
	case corev1.PodSucceeded:
		return "exited (pod succeeded)"
	case corev1.PodFailed:
		return "failed" + detail(pod.Status.Reason, pod.Status.Message)
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
			reason := c.Reason
			if reason == "" {
				reason = "unschedulable"
			}
			return "not scheduled: " + reason + detail("", c.Message)
		}
	}
	statuses := append(append([]corev1.ContainerStatus(nil), pod.Status.InitContainerStatuses...), pod.Status.ContainerStatuses...)
	for _, cs := range statuses {
		if p := containerProblem(cs); p != "" {
			return p
		}
	}
	if pod.Status.Phase == corev1.PodPending || pod.Status.Phase == "" {
		for _, cs := range statuses {
			if w := cs.State.Waiting; w != nil && w.Reason != "" {
				return "pending: " + w.Reason + detail("", w.Message)
			}
		}
		if pod.Spec.NodeName == "" {
			return "pending: waiting to be scheduled"
		}
		return "pending"
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			if c.Status == corev1.ConditionTrue {
				return ""
			}
			return "not ready" + notReadyDetail(pod, c)
		}
	}
	return "not ready"
}

// imageProblems are waiting reasons that mean the kubelet cannot get the image.
var imageProblems = map[string]bool{
	"ErrImagePull":      true,
	"ImagePullBackOff":  true,
	"InvalidImageName":  true,
	"ErrImageNeverPull": true,
}

func containerProblem(cs corev1.ContainerStatus) string {
	w := cs.State.Waiting
	switch {
	case w != nil && imageProblems[w.Reason]:
		return "image pull failed: " + w.Reason + detail("", w.Message)
	case w != nil && w.Reason == "CrashLoopBackOff":
		msg := fmt.Sprintf("crash loop: container %s restarted %d times", cs.Name, cs.RestartCount)
		if t := cs.LastTerminationState.Terminated; t != nil {
			msg += fmt.Sprintf(", last exit %d", t.ExitCode)
			if t.Reason != "" {
				msg += " (" + t.Reason + ")"
			}
			if m := firstLine(t.Message); m != "" {
				msg += ": " + m
			}
		}
		return msg
	case w != nil && (w.Reason == "CreateContainerConfigError" || w.Reason == "CreateContainerError" || w.Reason == "RunContainerError"):
		return "cannot start: " + w.Reason + detail("", w.Message)
	}
	return ""
}

func notReadyDetail(pod *corev1.Pod, ready corev1.PodCondition) string {
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Ready {
			continue
		}
		if t := cs.State.Terminated; t != nil {
			return fmt.Sprintf(": container %s exited %d%s", cs.Name, t.ExitCode, detail(t.Reason, ""))
		}
		if cs.State.Running != nil && !cs.State.Running.StartedAt.IsZero() {
			return fmt.Sprintf(": container %s running %s, readiness probe not passing", cs.Name, time.Since(cs.State.Running.StartedAt.Time).Round(time.Second))
		}
	}
	return detail("", ready.Message)
}

// detail renders an optional reason and message as " (reason): message".
func detail(reason, msg string) string {
	var b strings.Builder
	if reason != "" {
		b.WriteString(" (" + reason + ")")
	}
	if m := firstLine(msg); m != "" {
		b.WriteString(": " + m)
	}
	return b.String()
}

// firstLine keeps table cells to one line and a sane length.
func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	const limit = 160
	if r := []rune(s); len(r) > limit {
		s = string(r[:limit-1]) + "…"
	}
	return s
}
