package testserver_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/idemkit/idem/internal/testserver"
)

func TestFreePort(t *testing.T) {
	port, err := testserver.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", fmt.Sprint("127.0.0.1:", port))
	if err != nil {
		t.Fatalf("port %d is not free: %v", port, err)
	}
	l.Close()
}

func TestTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "server.log")
	var b strings.Builder
	for i := range 30 {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	got := testserver.Tail(path)
	if !strings.HasPrefix(got, "last lines of server.log:\nline 10\n") || !strings.HasSuffix(got, "line 29") {
		t.Errorf("Tail = %q", got)
	}
	if got := testserver.Tail(filepath.Join(t.TempDir(), "missing")); !strings.HasPrefix(got, "(log ") {
		t.Errorf("Tail of a missing file = %q", got)
	}
}
