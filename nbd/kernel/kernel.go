// Package kernel attaches NBD exports to the Linux kernel as block devices
// (/dev/nbdX): it loads the nbd module when it is missing (LoadModule,
// with github.com/pmorjan/kmod) and configures devices through the nbd
// generic-netlink family (Connect, Reconfigure, Disconnect, Status), the
// interface that, unlike the old ioctls, lets a device outlive the process
// that serves it: when the server dies, I/O waits up to
// Config.DeadConnTimeout for Reconfigure to bring new sockets, so a
// filesystem mounted on the device survives a server restart.
//
// The kernel speaks only NBD's transmission phase. Whoever attaches makes
// a socketpair per connection, serves one end with
// nbd.Server.ServeTransmission and passes the other's descriptor here,
// with the export's size and transmission flags (nbd.Export.Flags) in
// Config. This package knows nothing of exports or of the server; the
// daemon wires the two (daemon/attach.go).
//
// Connect, Reconfigure and Disconnect need CAP_SYS_ADMIN; LoadModule needs
// CAP_SYS_MODULE when it has a module to load.
package kernel

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/pmorjan/kmod"
)

// Driver is the kernel's nbd driver. The zero value is the running
// kernel's; the fields point tests elsewhere. Every method opens what it
// needs and closes it before returning, so a Driver holds nothing open
// and is safe for concurrent use.
type Driver struct {
	// Sys is where sysfs is mounted; "" means /sys.
	Sys string
	// Modules is the modules root kmod reads (RELEASE/modules.dep, ...);
	// "" means /lib/modules.
	Modules string
	// Dev is where device nodes are; "" means /dev.
	Dev string

	// insmod loads a module file (tests record it); nil: kmod's
	// finit_module(2).
	insmod kmod.InitFunc
}

func (d *Driver) sys() string  { return orDefault(d.Sys, "/sys") }
func (d *Driver) dev() string  { return orDefault(d.Dev, "/dev") }
func (d *Driver) mods() string { return orDefault(d.Modules, "/lib/modules") }
func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// DevicePath is the device node of device index on a standard system.
func DevicePath(index int) string { return "/dev/nbd" + strconv.Itoa(index) }

// Path is the device node of device index under d.Dev.
func (d *Driver) Path(index int) string { return filepath.Join(d.dev(), "nbd"+strconv.Itoa(index)) }

// ParseDevice returns the index of a device named /dev/nbdN or nbdN.
func ParseDevice(s string) (int, error) {
	name := strings.TrimPrefix(s, "/dev/")
	digits, ok := strings.CutPrefix(name, "nbd")
	n, err := strconv.Atoi(digits)
	if !ok || err != nil || n < 0 || digits != strconv.Itoa(n) {
		return 0, fmt.Errorf("%q is not an nbd device (/dev/nbdN or nbdN)", s)
	}
	return n, nil
}

// Backend is the backend identifier device index was connected with
// (/sys/block/nbdN/backend, Config.Backend); "" when it has none or is
// not connected.
func (d *Driver) Backend(index int) (string, error) {
	b, err := os.ReadFile(filepath.Join(d.sys(), "block", "nbd"+strconv.Itoa(index), "backend"))
	if os.IsNotExist(err) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
