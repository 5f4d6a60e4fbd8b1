package nbd_test

import (
	"context"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"testing"

	"github.com/cairn-storage/cairn/nbd"
	"github.com/cairn-storage/cairn/nbd/nbdtest"
)

func TestBenchServe(t *testing.T) {
	sock, img := os.Getenv("BENCH_SOCK"), os.Getenv("BENCH_IMG")
	if sock == "" {
		t.Skip()
	}
	b, err := nbdtest.OpenFile(img, false)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := nbd.NewServer(nbd.Options{Exporter: nbdtest.NewExports(&nbd.Export{Name: "disk", Backend: b, MultiConn: true}), Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if p := os.Getenv("BENCH_PROF"); p != "" {
		f, _ := os.Create(p)
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	go func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
		<-ch
		srv.Shutdown(context.Background())
	}()
	srv.Serve(l)
}
