package main

import (
	"errors"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/daemon/api"
)

// cairnd's errors speak the API's language: an error about a request
// field names the field in api.Error.Field, and its message starts with
// the field ("block_size: ...") or suggests it ("... or delete with
// force=true"). A person typed a flag or an argument, not a field, so the
// CLI says what they typed: --block-size, --force, DISK.

// inCLIWords returns err's message with the API field it is about put as
// cmd's user typed it; any other error's message unchanged.
func inCLIWords(cmd *cobra.Command, err error) string {
	msg := err.Error()
	var e *api.Error
	if cmd == nil || !errors.As(err, &e) || e.Field == "" {
		return msg
	}
	term, isFlag := cliTerm(cmd, e.Field, e.Message)
	if term == "" {
		return msg
	}
	f := e.Field
	rest, found := strings.CutPrefix(e.Message, f)
	switch {
	case found && (strings.HasPrefix(rest, ":") || strings.HasPrefix(rest, " ")):
		e2 := term + rest
		msg = strings.Replace(msg, e.Message, e2, 1)
	case isFlag:
		msg = strings.ReplaceAll(msg, f+"=true", term)
	}
	return msg
}

// cliTerm is how cmd's user gives the API field: its flag (the field with
// dashes: block_size is --block-size), or the positional argument of
// cmd's usage line that stands for it. A field two arguments may stand for
// (name: a disk's in the path, a new snapshot's in the body) is the one
// whose value the message quotes.
func cliTerm(cmd *cobra.Command, field, msg string) (term string, isFlag bool) {
	flag := strings.ReplaceAll(field, "_", "-")
	if cmd.Flags().Lookup(flag) != nil {
		return "--" + flag, true
	}
	args := cmd.Flags().Args()
	var candidates []int
	for i, p := range positionals(cmd) {
		if strings.EqualFold(p, field) || field == "name" && p == "DISK" || field == "disk" && p == "DISK" {
			candidates = append(candidates, i)
		}
	}
	for _, i := range candidates {
		if i < len(args) && strings.Contains(msg, strconv.Quote(args[i])) {
			return positionals(cmd)[i], false
		}
	}
	if len(candidates) > 0 {
		return positionals(cmd)[candidates[0]], false
	}
	return "", false
}

// positionals are the argument names in cmd's usage line, in order:
// "diff DISK FROM [TO]" has DISK, FROM and TO; DISK[@SNAPSHOT] is DISK.
func positionals(cmd *cobra.Command) []string {
	var out []string
	for _, w := range strings.Fields(cmd.Use)[1:] {
		if strings.HasPrefix(w, "-") || w == "|" {
			break // the flags part: "create NAME --size SIZE | --adopt PATH"
		}
		w = strings.Trim(w, "[].")
		w, _, _ = strings.Cut(w, "[")
		if w != "" && w == strings.ToUpper(w) {
			out = append(out, w)
		}
	}
	return out
}

// usageLine is the command's usage for a usage error: "cairn snapshot
// list DISK", or for a command that only holds others "cairn snapshot
// COMMAND" and where to find them.
func usageLine(cmd *cobra.Command) string {
	if cmd.HasAvailableSubCommands() {
		return cmd.CommandPath() + " COMMAND (" + cmd.CommandPath() + " --help lists them)"
	}
	return strings.TrimSuffix(cmd.UseLine(), " [flags]")
}
