package kernel

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/pmorjan/kmod"
	"golang.org/x/sys/unix"
)

// ErrNoModule is wrapped by LoadModule's errors when the nbd driver is
// neither loaded nor loadable.
var ErrNoModule = errors.New("the nbd kernel module is not available")

// LoadModule makes sure the kernel has the nbd driver: nothing to do when
// /sys/module/nbd exists (loaded, or built in); otherwise it loads nbd
// and its dependencies from the modules tree of the running kernel
// (/lib/modules/RELEASE, as modprobe does) and reports loaded. Its
// errors wrap ErrNoModule and say what to install or do.
func (d *Driver) LoadModule() (loaded bool, err error) {
	sysModule := filepath.Join(d.sys(), "module", "nbd")
	if _, err := os.Stat(sysModule); err == nil {
		return false, nil
	}
	opts := []kmod.Option{kmod.SetRootDir(d.mods()), kmod.SetInitFunc(finitModule)}
	if d.insmod != nil {
		// A made-up tree: what is loaded is its business, not
		// /proc/modules'.
		opts = []kmod.Option{kmod.SetRootDir(d.mods()), kmod.SetInitFunc(d.insmod), kmod.SetIgnoreStatus()}
	}
	release := kernelRelease()
	dir := filepath.Join(d.mods(), release)
	k, err := kmod.New(opts...)
	if errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("%w: this kernel (%s) has no modules tree at %s (no modules.dep): install its modules package (Debian: linux-image-%s), or use a kernel with nbd built in (CONFIG_BLK_DEV_NBD=y)",
			ErrNoModule, release, dir, release)
	}
	if err != nil {
		return false, fmt.Errorf("%w: read the modules tree %s: %v", ErrNoModule, dir, err)
	}
	if _, err := os.Stat("/proc/modules"); err != nil && d.insmod == nil {
		return false, fmt.Errorf("%w: this kernel (%s) cannot load modules (no /proc/modules): use one with nbd built in (CONFIG_BLK_DEV_NBD=y)", ErrNoModule, release)
	}
	switch err := k.Load("nbd", "", 0); {
	case errors.Is(err, kmod.ErrModuleNotFound):
		return false, fmt.Errorf("%w: %s/modules.dep lists no nbd module: install the package that ships nbd.ko for kernel %s (Debian: linux-image-%s; Ubuntu: linux-modules-extra-%s), or use a kernel with CONFIG_BLK_DEV_NBD",
			ErrNoModule, dir, release, release, release)
	case errors.Is(err, unix.EPERM):
		return false, fmt.Errorf("%w: loading nbd was refused (%v): cairnd needs CAP_SYS_MODULE to load it, or load it at boot (echo nbd > /etc/modules-load.d/nbd.conf)", ErrNoModule, err)
	case err != nil:
		return false, fmt.Errorf("%w: load nbd from %s: %v", ErrNoModule, dir, err)
	}
	if _, err := os.Stat(sysModule); err != nil {
		return false, fmt.Errorf("%w: nbd was loaded from %s but %s did not appear: %v", ErrNoModule, dir, sysModule, err)
	}
	return true, nil
}

// finitModule loads one module file with finit_module(2); a compressed
// one (.ko.xz, .ko.zst, .ko.gz, as newer distributions ship them) is
// handed to the kernel to decompress (Linux 5.17 and later).
func finitModule(path, params string, flags int) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if !strings.HasSuffix(path, ".ko") {
		flags |= unix.MODULE_INIT_COMPRESSED_FILE
	}
	return unix.FinitModule(int(f.Fd()), params, flags)
}

// kernelRelease is uname -r.
func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}
