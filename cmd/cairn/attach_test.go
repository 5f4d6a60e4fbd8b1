package main

import (
	"os"
	"testing"

	"github.com/cairn-storage/cairn/daemon/daemontest"
)

// The attach commands' refusals, as this machine (no nbd driver) gives
// them; attaching for real is nbd/kernel's TestAttachInVM, which runs
// this CLI in the test VM.
func TestAttachCommands(t *testing.T) {
	in := daemontest.Start(t, nil)
	sock := in.Client.Socket
	ok(t, sock, "disk", "create", "d1", "--size", "1M")
	ok(t, sock, "disk", "create", "nbd3", "--size", "1M")
	cases := []exitCase{
		{"no export", []string{"disk", "attach"}, exitUsage, `accepts 1 arg`},
		{"fractional reconnect timeout", []string{"disk", "attach", "d1", "--reconnect-timeout", "1.5s"}, exitUsage, `invalid --reconnect-timeout 1.5s: whole seconds`},
		{"connections out of range", []string{"disk", "attach", "d1", "--connections", "30"}, exitError, `^cairn: --connections 30: from 1 to 16\n$`},
		{"not a device", []string{"disk", "attach", "d1", "--device", "/dev/sda"}, exitError, `^cairn: --device: "/dev/sda" is not an nbd device`},
		{"no such export", []string{"disk", "attach", "d1@nosuch"}, exitError, `^cairn: export d1@nosuch: no such disk or readable snapshot`},
		{"detach what is not attached", []string{"disk", "detach", "d1"}, exitError, `^cairn: d1 is not attached \(cairn disk attachments lists what is\)\n$`},
		{"detach a device not attached", []string{"disk", "detach", "/dev/nbd7"}, exitError, `^cairn: device /dev/nbd7 is not attached by cairnd`},
		{"detach nbdN", []string{"disk", "detach", "nbd3"}, exitError, `^cairn: device /dev/nbd3 is not attached by cairnd`},
		{"attachments", []string{"disk", "attachments"}, exitOK, `^$`},
	}
	if _, err := os.Stat("/sys/module/nbd"); err != nil {
		cases = append(cases, exitCase{"no nbd driver", []string{"disk", "attach", "d1"}, exitError, `^cairn: kernel attach: the nbd kernel module is not available: `})
	}
	checkExitCodes(t, sock, cases)
	if out := ok(t, sock, "disk", "attachments"); out != "DEVICE  EXPORT  MODE  SIZE  CONNECTIONS  STATE  SINCE\n" {
		t.Errorf("attachments with none: %q", out)
	}
	if out := ok(t, sock, "disk", "attachments", "-o", "json"); out != "[]\n" {
		t.Errorf("attachments -o json with none: %q", out)
	}
}
