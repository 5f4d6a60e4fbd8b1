// Command cairn is the command line of Cairn: it drives cairnd through the
// control API on its Unix socket (docs/cli.md).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/daemon/api"
)

// Exit codes (docs/cli.md).
const (
	exitOK    = 0
	exitError = 1 // the command failed (cairnd answered an error, or could not be reached)
	exitUsage = 2 // the command line is wrong
)

// version is cairn's version (make build sets it, as cairnd's).
var version = "dev"

// Socket paths tried when neither --socket nor CAIRN_SOCKET is given.
const (
	localSocket  = ".cairn/cairn.sock" // what `make run` uses, relative to the current directory
	systemSocket = "/run/cairn/cairn.sock"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := execute(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// app is one invocation's state, shared by every subcommand.
type app struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	socket         string // --socket
	output         string // -o
	client         *api.Client
	poll           time.Duration        // how often followed work is polled; 0 means defaultPoll
	terminal       func(io.Writer) bool // whether progress may redraw a line; nil means isTerminal
}

// runError marks an error from running a command (exit 1); every other
// error from cobra is about the command line (exit 2).
type runError struct{ err error }

func (e runError) Error() string { return e.err.Error() }
func (e runError) Unwrap() error { return e.err }

// orNil is e, or nil when it holds no error.
func (e runError) orNil() error {
	if e.err == nil {
		return nil
	}
	return e
}

// execute runs the command line and returns the exit code.
func execute(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	a := &app{stdout: stdout, stderr: stderr, getenv: getenv}
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	var re runError
	if errors.As(err, &re) {
		fmt.Fprintf(stderr, "cairn: %s\n", inCLIWords(cmd, re.err))
		return exitError
	}
	if cmd == nil {
		cmd = root
	}
	fmt.Fprintf(stderr, "cairn: %v\nusage: %s\n", err, usageLine(cmd))
	return exitUsage
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "cairn",
		Short: "Manage Cairn's disks and snapshots through cairnd",
		Long: "cairn drives cairnd, Cairn's daemon, through its control API.\n\n" +
			"The socket is --socket, else $CAIRN_SOCKET, else ./" + localSocket + " when it exists (make run), else " + systemSocket + ".\n" +
			"Exit codes: 0 success, 1 the command failed (verify: faults found), 2 usage error.",
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if a.output != "table" && a.output != "json" {
				return fmt.Errorf("invalid -o %q: use table or json", a.output)
			}
			a.client = &api.Client{Socket: a.socketPath()}
			return nil
		},
	}
	var showVersion bool
	root.Flags().BoolVarP(&showVersion, "version", "v", false, "print cairn's version and, when it answers, cairnd's")
	root.RunE = func(cmd *cobra.Command, args []string) error {
		if showVersion {
			return runError{a.printVersion(cmd.Context())}.orNil()
		}
		return cmd.Help()
	}
	root.PersistentFlags().StringVar(&a.socket, "socket", "", "cairnd's API socket (default $CAIRN_SOCKET, ./"+localSocket+" or "+systemSocket+")")
	root.PersistentFlags().StringVarP(&a.output, "output", "o", "table", "output format: table or json")
	root.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json"}, cobra.ShellCompDirectiveNoFileComp))
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return err })
	root.AddCommand(a.diskCmd(), a.snapshotCmd(), a.machineCmd(), a.imageCmd(), a.taskCmd(), a.verifyCmd(), a.storeCmd(), a.exportCmd(), a.importCmd(), a.checkCmd(), a.infoCmd(),
		a.mountCmd(), a.umountCmd(), a.versionCmd(), a.policyCmd(), a.eventsCmd())
	return root
}

// socketPath chooses the API socket.
func (a *app) socketPath() string {
	if a.socket != "" {
		return a.socket
	}
	if s := a.getenv("CAIRN_SOCKET"); s != "" {
		return s
	}
	if _, err := os.Stat(localSocket); err == nil {
		return localSocket
	}
	return systemSocket
}

// group makes a command that only holds subcommands: alone it prints its
// help; with an unknown subcommand it is a usage error.
func group(cmd *cobra.Command, subs ...*cobra.Command) *cobra.Command {
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return fmt.Errorf("unknown command %q for %q", args[0], cmd.CommandPath())
		}
		return cmd.Help()
	}
	cmd.AddCommand(subs...)
	return cmd
}

// run wraps a command's body so that its errors exit 1.
func (a *app) run(fn func(ctx context.Context, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if err := fn(cmd.Context(), args); err != nil {
			return runError{err}
		}
		return nil
	}
}
