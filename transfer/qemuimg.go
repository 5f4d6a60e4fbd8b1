package transfer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
)

// Limits bound a qemu-img that reads an untrusted image, as qemu's
// documentation advises ("qemu-img info": a crafted image can make it use
// much memory or CPU time): applied with prlimit(1).
type Limits struct {
	AddressSpace int64 // bytes of virtual memory (prlimit --as)
	CPUSeconds   int64 // CPU time (prlimit --cpu); 0 for none
}

// Limits of the qemu-img runs that only look at an image, and of the
// conversions (which run as long as the data takes: no CPU limit).
var (
	inspectLimits = Limits{AddressSpace: 1 << 30, CPUSeconds: 30}
	convertLimits = Limits{AddressSpace: 2 << 30}
)

// command is qemu-img with args, under limits when given.
func command(ctx context.Context, limits *Limits, args ...string) *exec.Cmd {
	if limits == nil {
		return exec.CommandContext(ctx, "qemu-img", args...)
	}
	pre := []string{"--as=" + strconv.FormatInt(limits.AddressSpace, 10)}
	if limits.CPUSeconds > 0 {
		pre = append(pre, "--cpu="+strconv.FormatInt(limits.CPUSeconds, 10))
	}
	return exec.CommandContext(ctx, "prlimit", append(append(pre, "--", "qemu-img"), args...)...)
}

// qemuImg runs qemu-img and returns its standard output; a failure
// carries what qemu-img said.
func qemuImg(ctx context.Context, limits *Limits, args ...string) ([]byte, error) {
	cmd := command(ctx, limits, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, qemuError(args[0], err, stderr.Bytes())
	}
	return out, nil
}

// QemuError is a qemu-img run that failed.
type QemuError struct {
	Command string // convert, info, check...
	Code    int    // exit status; -1 when killed
	Message string // what it said, last lines first trimmed
}

func (e *QemuError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("qemu-img %s failed (exit status %d)", e.Command, e.Code)
	}
	return fmt.Sprintf("qemu-img %s: %s", e.Command, e.Message)
}

// qemuError describes a failed run of qemu-img sub.
func qemuError(sub string, err error, stderr []byte) error {
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		return fmt.Errorf("run qemu-img %s: %w (is qemu-utils installed?)", sub, err)
	}
	msg := strings.TrimSpace(string(stderr))
	msg = strings.ReplaceAll(msg, "qemu-img: ", "")
	if exit.ExitCode() < 0 {
		msg = strings.TrimSpace(msg + " (killed: " + exit.String() + "; the image needed more memory or CPU time than cairn allows qemu-img for an untrusted image)")
	}
	return &QemuError{Command: sub, Code: exit.ExitCode(), Message: msg}
}

// convert runs qemu-img convert args with -p and calls progress with the
// percentage it reports. ctx ending kills it.
func convert(ctx context.Context, limits *Limits, args []string, progress func(percent float64)) error {
	cmd := command(ctx, limits, append([]string{"convert", "-p"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run qemu-img convert: %w (is qemu-utils installed?)", err)
	}
	readProgress(stdout, progress)
	if err := cmd.Wait(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return qemuError("convert", err, stderr.Bytes())
	}
	return nil
}

// readProgress parses qemu-img -p's "    (12.34/100%)\r" updates.
func readProgress(r io.Reader, progress func(percent float64)) {
	sc := bufio.NewScanner(r)
	sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
		if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
			return i + 1, data[:i], nil
		}
		if atEOF && len(data) > 0 {
			return len(data), data, nil
		}
		return 0, nil, nil
	})
	for sc.Scan() {
		if p, ok := parseProgress(sc.Text()); ok && progress != nil {
			progress(p)
		}
	}
	io.Copy(io.Discard, r)
}

// parseProgress reads one "(12.34/100%)" update.
func parseProgress(line string) (float64, bool) {
	line = strings.TrimSpace(line)
	rest, ok := strings.CutPrefix(line, "(")
	if !ok {
		return 0, false
	}
	num, _, ok := strings.Cut(rest, "/100%)")
	if !ok {
		return 0, false
	}
	p, err := strconv.ParseFloat(num, 64)
	if err != nil || p < 0 || p > 100 {
		return 0, false
	}
	return p, true
}

// Info is what qemu-img info --output=json says of one image (the fields
// Cairn reads).
type Info struct {
	Filename            string `json:"filename"`
	Format              string `json:"format"`
	VirtualSize         int64  `json:"virtual-size"`
	ActualSize          int64  `json:"actual-size"`
	BackingFilename     string `json:"backing-filename"`
	FullBackingFilename string `json:"full-backing-filename"`
	BackingFormat       string `json:"backing-filename-format"`
	DirtyFlag           bool   `json:"dirty-flag"`
	FormatSpecific      struct {
		Type string `json:"type"`
		Data struct {
			Corrupt     bool   `json:"corrupt"`
			CreateType  string `json:"create-type"` // vmdk
			Compat      string `json:"compat"`
			DataFile    string `json:"data-file"`
			Encrypt     any    `json:"encrypt"`
			Extents     []any  `json:"extents"`
			RefcountBit int    `json:"refcount-bits"`
		} `json:"data"`
	} `json:"format-specific"`
	Encrypted bool `json:"encrypted"`
}

// info runs qemu-img info on one image, without opening its backing file
// (qemu-img info never does without --backing-chain). format "" lets
// qemu-img probe it.
func info(ctx context.Context, file, format string) (Info, error) {
	args := []string{"info", "--output=json", "-U"}
	if format != "" {
		args = append(args, "-f", format)
	}
	out, err := qemuImg(ctx, &inspectLimits, append(args, "--", file)...)
	if err != nil {
		return Info{}, err
	}
	var in Info
	if err := json.Unmarshal(out, &in); err != nil {
		return Info{}, fmt.Errorf("qemu-img info %s: unreadable answer: %w", file, err)
	}
	return in, nil
}

// CheckResult is what qemu-img check --output=json says (the fields Cairn
// reads), with its exit status: 0 clean, 2 corrupt, 3 leaked clusters
// only, 63 the format has no check.
type CheckResult struct {
	Filename         string `json:"filename"`
	Format           string `json:"format"`
	CheckErrors      int    `json:"check-errors"`
	Corruptions      int    `json:"corruptions"`
	Leaks            int    `json:"leaks"`
	CorruptionsFixed int    `json:"corruptions-fixed"`
	TotalClusters    int64  `json:"total-clusters"`
	AllocatedCluster int64  `json:"allocated-clusters"`
	Fragmented       int64  `json:"fragmented-clusters"`
	Code             int    `json:"exit_code"`
	Supported        bool   `json:"supported"`
	Message          string `json:"message,omitempty"`
}

// Clean reports whether the check found nothing wrong (leaks waste space
// and harm nothing).
func (c CheckResult) Clean() bool {
	return !c.Supported || c.Code == 0 || c.Code == 3 && c.Corruptions == 0 && c.CheckErrors == 0
}

// qemuCheck runs qemu-img check on an image file, read-only.
func qemuCheck(ctx context.Context, file, format string) (CheckResult, error) {
	cmd := command(ctx, &inspectLimits, "check", "--output=json", "-U", "-f", format, "--", file)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	res := CheckResult{Supported: true}
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		return res, qemuError("check", err, stderr.Bytes())
	}
	if exit != nil {
		res.Code = exit.ExitCode()
	}
	msg := strings.TrimSpace(strings.ReplaceAll(stderr.String(), "qemu-img: ", ""))
	switch res.Code {
	case 0, 2, 3:
		if jerr := json.Unmarshal(out, &res); jerr != nil {
			return res, fmt.Errorf("qemu-img check %s: unreadable answer: %w", file, jerr)
		}
		res.Code, res.Supported, res.Message = exitCode(exit), true, msg
		return res, nil
	case 63:
		res.Supported, res.Message = false, "qemu-img has no check for "+format+" images"
		return res, nil
	}
	if msg == "" {
		msg = fmt.Sprintf("exit status %d", res.Code)
	}
	res.Message = msg
	return res, nil
}

func exitCode(exit *exec.ExitError) int {
	if exit == nil {
		return 0
	}
	return exit.ExitCode()
}

// measure is qemu-img measure's estimate of the data in an image: the
// bytes a qcow2 of it needs, which is what is allocated (uncompressed).
func measure(ctx context.Context, file, format string) (uint64, error) {
	out, err := qemuImg(ctx, &inspectLimits, "measure", "--output=json", "-f", format, "-O", "qcow2", "--", file)
	if err != nil {
		return 0, err
	}
	var m struct {
		Required uint64 `json:"required"`
	}
	if err := json.Unmarshal(out, &m); err != nil {
		return 0, fmt.Errorf("qemu-img measure %s: unreadable answer: %w", file, err)
	}
	return m.Required, nil
}
