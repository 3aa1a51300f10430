package discovery

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Pod builders shaped like what the meshes' injectors produce.

type podOpt func(*corev1.Pod)

func newPod(ns, name, uid, node string, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid), Annotations: map[string]string{}, Labels: map[string]string{}},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: "198.18.0.10"}}},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func container(name, id string, ports ...int32) podOpt {
	return func(p *corev1.Pod) {
		c := corev1.Container{Name: name, Image: name}
		for _, port := range ports {
			c.Ports = append(c.Ports, corev1.ContainerPort{Name: "http", ContainerPort: port})
		}
		p.Spec.Containers = append(p.Spec.Containers, c)
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, status(name, id))
	}
}

func nativeSidecar(name, id string) podOpt {
	return func(p *corev1.Pod) {
		always := corev1.ContainerRestartPolicyAlways
		p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: name, RestartPolicy: &always})
		p.Status.InitContainerStatuses = append(p.Status.InitContainerStatuses, status(name, id))
	}
}

func initContainer(name string, args ...string) podOpt {
	return func(p *corev1.Pod) {
		p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: name, Args: args})
	}
}

func ephemeral(name, id string) podOpt {
	return func(p *corev1.Pod) {
		p.Spec.EphemeralContainers = append(p.Spec.EphemeralContainers, corev1.EphemeralContainer{
			EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: name}})
		p.Status.EphemeralContainerStatuses = append(p.Status.EphemeralContainerStatuses, status(name, id))
	}
}

func annotate(k, v string) podOpt { return func(p *corev1.Pod) { p.Annotations[k] = v } }
func label(k, v string) podOpt    { return func(p *corev1.Pod) { p.Labels[k] = v } }

func runAs(container string, uid int64) podOpt {
	return func(p *corev1.Pod) {
		for _, list := range [][]corev1.Container{p.Spec.Containers, p.Spec.InitContainers} {
			for i := range list {
				if list[i].Name == container {
					list[i].SecurityContext = &corev1.SecurityContext{RunAsUser: &uid}
				}
			}
		}
	}
}

func env(container, k, v string) podOpt {
	return func(p *corev1.Pod) {
		for i := range p.Spec.Containers {
			if p.Spec.Containers[i].Name == container {
				p.Spec.Containers[i].Env = append(p.Spec.Containers[i].Env, corev1.EnvVar{Name: k, Value: v})
			}
		}
	}
}

func status(name, id string) corev1.ContainerStatus {
	s := corev1.ContainerStatus{Name: name}
	if id != "" {
		s.ContainerID = id
		s.State.Running = &corev1.ContainerStateRunning{}
	}
	return s
}

const istioStatus = `{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["istio-envoy"],"imagePullSecrets":null,"revision":"default"}`

var istioInitArgs = []string{"istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"}
