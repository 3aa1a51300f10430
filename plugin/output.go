package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"sigs.k8s.io/yaml"
)

// Output formats. The empty string is the human table.
const (
	outputTable = "table"
	outputWide  = "wide"
	outputJSON  = "json"
	outputYAML  = "yaml"
)

// validateChoice checks a flag against its closed set of values.
func validateChoice(flag, value string, allowed []string) error {
	if slices.Contains(allowed, value) {
		return nil
	}
	return fmt.Errorf("invalid --%s %q: must be one of %s", flag, value, strings.Join(allowed, ", "))
}

// addOutputFlag registers -o with completion of its values.
func addOutputFlag(cmd *cobra.Command, target *string, allowed []string, usage string) {
	cmd.Flags().StringVarP(target, "output", "o", "", usage+" One of: "+strings.Join(allowed, ", ")+".")
	_ = cmd.RegisterFlagCompletionFunc("output", fixedCompletion(allowed...))
}

// writeData prints v as JSON or YAML; both use the struct's json tags so the two agree.
func writeData(w io.Writer, format string, v any) error {
	switch format {
	case outputJSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case outputYAML:
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	return fmt.Errorf("no data format %q", format)
}

// isTerminal says whether w is a terminal, where progress can be redrawn in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}
