// Package testserver holds what the test harnesses that start servers
// (internal/pgtest, internal/natstest) share: a free loopback port, and the
// tail of a server's log for failure messages.
package testserver

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
)

// FreePort returns a loopback TCP port that is free now. Another process
// may take it before the server binds it: a harness retries its start on
// another port when that happens.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Tail returns the last 20 lines of the log file at path, introduced by its
// name, or says why it cannot.
func Tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(log %s: %v)", path, err)
	}
	b = bytes.TrimRight(b, "\n")
	lines := bytes.Split(b, []byte("\n"))
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return fmt.Sprintf("last lines of %s:\n%s", filepath.Base(path), bytes.Join(lines, []byte("\n")))
}
