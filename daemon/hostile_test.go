package daemon_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/daemon/daemontest"
)

// Hostile clients, all at once, while an honest one runs fio with verify
// on another disk: malformed handshakes, oversize and out-of-range
// requests, more idle connections than the cap, slow-loris API clients and
// an NBD client that never reads its replies. Each affects only its own
// connection, the daemon's memory stays bounded, and fio's verify passes.

// rawNBD is a minimal NBD client: fixed newstyle, NBD_OPT_GO, simple replies.
type rawNBD struct{ c net.Conn }

func dialNBD(t *testing.T, sock, export string) *rawNBD {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	hello := make([]byte, 18)
	if _, err := io.ReadFull(c, hello); err != nil {
		t.Fatalf("greeting: %v", err)
	}
	msg := binary.BigEndian.AppendUint32(nil, 3)
	msg = binary.BigEndian.AppendUint64(msg, 0x49484156454F5054)
	msg = binary.BigEndian.AppendUint32(msg, 7) // GO
	msg = binary.BigEndian.AppendUint32(msg, uint32(4+len(export)+2))
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(export)))
	msg = append(append(msg, export...), 0, 0)
	c.Write(msg)
	for {
		hdr := make([]byte, 20)
		if _, err := io.ReadFull(c, hdr); err != nil {
			t.Fatalf("GO reply: %v", err)
		}
		typ, n := binary.BigEndian.Uint32(hdr[12:]), binary.BigEndian.Uint32(hdr[16:])
		io.CopyN(io.Discard, c, int64(n))
		if typ == 1 { // ACK
			break
		}
		if typ&(1<<31) != 0 {
			t.Fatalf("GO refused: %#x", typ)
		}
	}
	c.SetDeadline(time.Time{})
	return &rawNBD{c}
}

func (r *rawNBD) request(typ uint16, cookie, off uint64, length uint32, data []byte) error {
	b := binary.BigEndian.AppendUint32(nil, 0x25609513)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	_, err := r.c.Write(append(b, data...))
	return err
}

// reply reads a simple reply's error (and discards a read's data).
func (r *rawNBD) reply(dataLen int) (uint32, error) {
	r.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	hdr := make([]byte, 16)
	if _, err := io.ReadFull(r.c, hdr); err != nil {
		return 0, err
	}
	errno := binary.BigEndian.Uint32(hdr[4:])
	if errno == 0 && dataLen > 0 {
		io.CopyN(io.Discard, r.c, int64(dataLen))
	}
	return errno, nil
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

func TestHostileClients(t *testing.T) {
	need(t, "fio")
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	cfg.NBDMaxConnections = 600
	in := daemontest.Start(t, &cfg)
	ctx := context.Background()
	createDisk(t, in, "honest", "64M")
	createDisk(t, in, "target", "4M")
	sock := in.Info().NBDSocket

	// The honest client: fio writes with verify for the whole test.
	fio := exec.Command("fio", "--name=honest", "--ioengine=nbd", "--uri=nbd+unix:///honest?socket="+sock,
		"--rw=randwrite", "--bs=4k", "--iodepth=8", "--size=48M", "--verify=crc32c", "--verify_fatal=1")
	var fioOut bytes.Buffer
	fio.Stdout, fio.Stderr = &fioOut, &fioOut
	if err := fio.Start(); err != nil {
		t.Fatal(err)
	}
	// The honest client is connected (as a VM's disk would be) before the
	// attack begins.
	waitFor(t, 20*time.Second, func() bool {
		for _, e := range in.Exports() {
			if e.Name == "honest" && len(e.Clients) > 0 {
				return true
			}
		}
		return false
	})
	var idle []net.Conn
	var stuck *rawNBD
	t.Cleanup(func() {
		for _, c := range idle {
			c.Close()
		}
		if stuck != nil {
			stuck.c.Close()
		}
	})
	before := heapInUse()
	var wg sync.WaitGroup
	run := func(name string, fn func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}()
	}

	run("malformed handshakes", func() error {
		for i := 0; i < 200; i++ {
			c, err := net.Dial("unix", sock)
			if err != nil {
				return err
			}
			io.ReadFull(c, make([]byte, 18))
			junk := [][]byte{[]byte("GET / HTTP/1.1\r\n\r\n"), {0xff, 0xff, 0xff, 0xff}, bytes.Repeat([]byte{0}, 100),
				binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint32(nil, 3), 0x49484156454F5054)} // then a huge option
			c.Write(junk[i%len(junk)])
			if i%len(junk) == 3 {
				c.Write([]byte{0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff})
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.Copy(io.Discard, c); err != nil {
				c.Close()
				return fmt.Errorf("malformed handshake %d: not closed by the server: %v", i, err)
			}
			c.Close()
		}
		return nil
	})

	run("oversize and out-of-range requests", func() error {
		r := dialNBD(t, sock, "target")
		defer r.c.Close()
		for i, req := range []struct {
			off    uint64
			length uint32
			want   uint32
		}{
			{0, 64 << 20, 22},        // over the 32 MiB payload limit: EINVAL
			{4 << 20, 4096, 22},      // past the end
			{1<<64 - 4096, 8192, 22}, // offset + length overflows
			{0, 4096, 0},             // and the connection still serves
		} {
			if err := r.request(0, uint64(i), req.off, req.length, nil); err != nil {
				return err
			}
			errno, err := r.reply(int(req.length))
			if err != nil || errno != req.want {
				return fmt.Errorf("read %d+%d: errno %d %v, want %d", req.off, req.length, errno, err, req.want)
			}
		}
		// A WRITE announcing more than the server will skip: hung up on.
		r.request(1, 9, 0, 1<<30, nil)
		r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, r.c); err != nil {
			return fmt.Errorf("1 GiB WRITE: connection not closed: %v", err)
		}
		return nil
	})

	run("more idle connections than the cap", func() error {
		refused := 0
		for i := 0; i < 900; i++ {
			c, err := net.Dial("unix", sock)
			if err != nil {
				return err
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(c, make([]byte, 18)); err != nil {
				refused++ // over the cap: closed at once
				c.Close()
				continue
			}
			idle = append(idle, c)
		}
		if refused == 0 {
			return fmt.Errorf("900 connections and a cap of 600: none refused")
		}
		return nil
	})

	run("a client that never reads its replies", func() error {
		stuck = dialNBD(t, sock, "target")
		for i := 0; i < 200; i++ { // 200 MiB of replies nobody reads
			stuck.c.SetWriteDeadline(time.Now().Add(2 * time.Second))
			if err := stuck.request(0, uint64(i), 0, 1<<20, nil); err != nil {
				break // the server stopped reading: its budget is spent
			}
		}
		return nil
	})

	run("slow-loris API clients", func() error {
		var lwg sync.WaitGroup
		errs := make(chan error, 50)
		for i := 0; i < 50; i++ {
			lwg.Add(1)
			go func() {
				defer lwg.Done()
				c, err := net.Dial("unix", in.Info().APISocket)
				if err != nil {
					errs <- err
					return
				}
				defer c.Close()
				fmt.Fprintf(c, "POST /v1/disks HTTP/1.1\r\nHost: cairn\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
				start := time.Now()
				for time.Since(start) < 30*time.Second {
					if _, err := c.Write([]byte(" ")); err != nil {
						// Closed: the 408 may be waiting to be read.
						c.SetReadDeadline(time.Now().Add(time.Second))
						if b, _ := io.ReadAll(c); strings.Contains(string(b), "408") {
							return
						}
						break
					}
					time.Sleep(2 * time.Second)
					c.SetReadDeadline(time.Now().Add(time.Millisecond))
					if b, _ := io.ReadAll(c); len(b) > 0 {
						if !strings.Contains(string(b), "408") {
							errs <- fmt.Errorf("slow body answered: %q", b)
						}
						return
					}
				}
				errs <- fmt.Errorf("a body sent a byte every 2 s was still being read after %v", time.Since(start))
			}()
		}
		// Meanwhile the API answers others at once.
		for i := 0; i < 20; i++ {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second) // answered, not blocked behind the slow ones; the machine may be loaded
			_, err := in.Client.Disks(cctx)
			cancel()
			if err != nil {
				errs <- fmt.Errorf("API call during the slow-loris: %v", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		lwg.Wait()
		close(errs)
		for err := range errs {
			return err
		}
		return nil
	})

	wg.Wait()
	grown := heapInUse() - before
	t.Logf("heap and stacks grew by %d MiB with %d idle connections and a stuck client", grown>>20, len(idle))
	// 600 connections negotiating at a 4 KiB buffer and a goroutine each
	// (with 128 KiB buffers they alone would take 75 MiB), a stuck client
	// whose 1 MiB reads go out by sendfile, and the test's own side.
	if grown > 48<<20 {
		t.Errorf("memory grew by %d MiB", grown>>20)
	}
	if err := fio.Wait(); err != nil || strings.Contains(fioOut.String(), "verify") && strings.Contains(fioOut.String(), "bad") {
		t.Fatalf("the honest client's fio: %v\n%s", err, fioOut.String())
	}
	if !strings.Contains(fioOut.String(), "err= 0") {
		t.Fatalf("fio reported errors:\n%s", fioOut.String())
	}
	// The daemon is whole.
	if h, err := in.Client.Health(ctx); err != nil || h.Status != "ok" {
		t.Fatalf("health after the attack: %+v %v", h, err)
	}
}
