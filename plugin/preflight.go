package main

import (
	"context"
	"fmt"
	"strings"

	authv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
)

// access is one permission a command needs. An empty Namespace means cluster-wide.
type access struct {
	Verb      string
	Group     string
	Resource  string
	Namespace string
	Name      string
}

func (a access) String() string {
	res := a.Resource
	if a.Group != "" {
		res += "." + a.Group
	}
	if a.Name != "" {
		res += " " + a.Name
	}
	where := "cluster-wide"
	if a.Namespace != "" {
		where = "in namespace " + a.Namespace
	}
	return fmt.Sprintf("%s %s (%s)", a.Verb, res, where)
}

// checkAccess asks the API server, through SelfSubjectAccessReviews, whether the caller may do
// each of needed, and names every permission that is missing. It does all the asking before
// anything is changed, so a failed check leaves the cluster untouched.
func checkAccess(ctx context.Context, cs kubernetes.Interface, needed []access) error {
	var missing []string
	for _, a := range needed {
		review := &authv1.SelfSubjectAccessReview{Spec: authv1.SelfSubjectAccessReviewSpec{
			ResourceAttributes: &authv1.ResourceAttributes{
				Verb: a.Verb, Group: a.Group, Resource: a.Resource, Namespace: a.Namespace, Name: a.Name,
			},
		}}
		got, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("checking permission to %s: %w", a, err)
		}
		if !got.Status.Allowed {
			missing = append(missing, a.String())
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("missing permissions: you cannot %s; ask a cluster admin to grant them, or check --context", strings.Join(missing, ", "))
}

// resourceOf maps an object to its resource name and scope through the cluster's discovery.
func resourceOf(mapper meta.RESTMapper, u *unstructured.Unstructured) (group, resource string, namespaced bool, err error) {
	gvk := u.GroupVersionKind()
	m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return "", "", false, fmt.Errorf("the cluster does not serve %s: %w", gvk, err)
	}
	return m.Resource.Group, m.Resource.Resource, m.Scope.Name() == meta.RESTScopeNameNamespace, nil
}

// applyAccess lists what server-side apply of objs needs: create (apply creates missing
// objects) and patch on each, and, because RBAC refuses to grant what the granter does not
// hold, every permission the objects' ClusterRoles grant.
func applyAccess(mapper meta.RESTMapper, objs []*unstructured.Unstructured) ([]access, error) {
	var out []access
	for _, u := range objs {
		group, resource, namespaced, err := resourceOf(mapper, u)
		if err != nil {
			return nil, err
		}
		ns := ""
		if namespaced {
			ns = u.GetNamespace()
		}
		for _, verb := range []string{"create", "patch"} {
			out = append(out, access{Verb: verb, Group: group, Resource: resource, Namespace: ns})
		}
		if u.GetKind() == "ClusterRole" {
			granted, err := grantedAccess(u)
			if err != nil {
				return nil, err
			}
			out = append(out, granted...)
		}
	}
	return dedupe(out), nil
}

func grantedAccess(role *unstructured.Unstructured) ([]access, error) {
	rules, _, err := unstructured.NestedSlice(role.Object, "rules")
	if err != nil {
		return nil, fmt.Errorf("ClusterRole %s: %w", role.GetName(), err)
	}
	var out []access
	for _, r := range rules {
		m, _ := r.(map[string]any)
		groups, _, _ := unstructured.NestedStringSlice(m, "apiGroups")
		resources, _, _ := unstructured.NestedStringSlice(m, "resources")
		verbs, _, _ := unstructured.NestedStringSlice(m, "verbs")
		for _, g := range groups {
			for _, res := range resources {
				for _, v := range verbs {
					out = append(out, access{Verb: v, Group: g, Resource: res})
				}
			}
		}
	}
	return out, nil
}

func dedupe(in []access) []access {
	seen := map[access]bool{}
	var out []access
	for _, a := range in {
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}
