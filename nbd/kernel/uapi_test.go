package kernel

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The numbers in uapi.go, checked against the kernel's own headers as
// Debian's linux-libc-dev installs them (scripts/deps.sh). The headers
// are parsed, not compiled: enums count from zero or from their "= N",
// defines are numbers or (1 << N).

const uapiDir = "/usr/include/linux"

// uapi returns every enum member and numeric define of the headers.
func uapi(t *testing.T, files ...string) map[string]uint64 {
	t.Helper()
	out := make(map[string]uint64)
	comments := regexp.MustCompile(`(?s)/\*.*?\*/|//[^\n]*`)
	enums := regexp.MustCompile(`(?s)enum\s*\w*\s*\{(.*?)\}`)
	defines := regexp.MustCompile(`(?m)^#define[ \t]+(\w+)[ \t]+(.+)$`)
	for _, f := range files {
		b, err := os.ReadFile(uapiDir + "/" + f)
		if err != nil {
			t.Fatalf("the kernel's uapi header: %v (scripts/deps.sh installs linux-libc-dev)", err)
		}
		src := comments.ReplaceAllString(string(b), "")
		for _, m := range enums.FindAllStringSubmatch(src, -1) {
			next := uint64(0)
			for _, member := range strings.Split(m[1], ",") {
				name, val, explicit := strings.Cut(strings.TrimSpace(member), "=")
				name = strings.TrimSpace(name)
				if name == "" {
					continue
				}
				if explicit {
					v, ok := number(val)
					if !ok {
						t.Fatalf("%s: enum member %s = %q: not a number", f, name, val)
					}
					next = v
				}
				out[name] = next
				next++
			}
		}
		for _, m := range defines.FindAllStringSubmatch(src, -1) {
			if v, ok := number(m[2]); ok {
				out[m[1]] = v
			} else if s, err := strconv.Unquote(strings.TrimSpace(m[2])); err == nil {
				out[m[1]+"/string:"+s] = 1
			}
		}
	}
	return out
}

// number parses 12, 0x1f, (1 << 3) and 1<<3.
func number(s string) (uint64, bool) {
	s = strings.TrimSpace(strings.Trim(strings.TrimSpace(s), "()"))
	if a, b, ok := strings.Cut(s, "<<"); ok {
		x, err1 := strconv.ParseUint(strings.TrimSpace(a), 0, 64)
		y, err2 := strconv.ParseUint(strings.TrimSpace(b), 0, 64)
		return x << y, err1 == nil && err2 == nil
	}
	v, err := strconv.ParseUint(s, 0, 64)
	return v, err == nil
}

func TestUAPINumbers(t *testing.T) {
	h := uapi(t, "nbd-netlink.h", "nbd.h")
	for _, c := range []struct {
		name string
		ours uint64
	}{
		{"NBD_GENL_VERSION", familyVersion},
		{"NBD_CMD_CONNECT", uint64(cmdConnect)},
		{"NBD_CMD_DISCONNECT", uint64(cmdDisconnect)},
		{"NBD_CMD_RECONFIGURE", uint64(cmdReconfigure)},
		{"NBD_CMD_STATUS", uint64(cmdStatus)},
		{"NBD_ATTR_INDEX", uint64(attrIndex)},
		{"NBD_ATTR_SIZE_BYTES", uint64(attrSizeBytes)},
		{"NBD_ATTR_BLOCK_SIZE_BYTES", uint64(attrBlockSizeBytes)},
		{"NBD_ATTR_TIMEOUT", uint64(attrTimeout)},
		{"NBD_ATTR_SERVER_FLAGS", uint64(attrServerFlags)},
		{"NBD_ATTR_CLIENT_FLAGS", uint64(attrClientFlags)},
		{"NBD_ATTR_SOCKETS", uint64(attrSockets)},
		{"NBD_ATTR_DEAD_CONN_TIMEOUT", uint64(attrDeadConnTimeout)},
		{"NBD_ATTR_DEVICE_LIST", uint64(attrDeviceList)},
		{"NBD_ATTR_BACKEND_IDENTIFIER", uint64(attrBackendIdentifier)},
		{"NBD_SOCK_ITEM", uint64(sockItem)},
		{"NBD_SOCK_FD", uint64(sockFD)},
		{"NBD_DEVICE_ITEM", uint64(deviceItem)},
		{"NBD_DEVICE_INDEX", uint64(deviceIndex)},
		{"NBD_DEVICE_CONNECTED", uint64(deviceConnected)},
		{"NBD_CFLAG_DESTROY_ON_DISCONNECT", cflagDestroyOnDisconnect},
		{"NBD_CFLAG_DISCONNECT_ON_CLOSE", cflagDisconnectOnClose},
		// The transmission flags the kernel reads from NBD_ATTR_SERVER_FLAGS
		// (what nbd.Export.Flags computes), checked in message_test.go.
		{"NBD_FLAG_READ_ONLY", flagReadOnly},
		{"NBD_FLAG_SEND_FLUSH", flagSendFlush},
		{"NBD_FLAG_SEND_FUA", flagSendFUA},
		{"NBD_FLAG_SEND_TRIM", flagSendTrim},
		{"NBD_FLAG_CAN_MULTI_CONN", flagCanMultiConn},
	} {
		got, ok := h[c.name]
		if !ok {
			t.Errorf("%s is not in the kernel's headers", c.name)
			continue
		}
		if got != c.ours {
			t.Errorf("%s = %d in the kernel's headers, %d here", c.name, got, c.ours)
		}
	}
	if h["NBD_GENL_FAMILY_NAME/string:"+familyName] != 1 {
		t.Errorf("NBD_GENL_FAMILY_NAME is not %q in the kernel's headers", familyName)
	}
	if clientFlags&(cflagDestroyOnDisconnect|cflagDisconnectOnClose) != 0 {
		t.Errorf("client flags %#x: the device must survive its server and its last opener", clientFlags)
	}
}
