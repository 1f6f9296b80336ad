// Package testserver holds what the test harnesses that start servers
// (internal/pgtest, internal/natstest) share: a free loopback port, the
// start of a server process that dies with the test binary, and the tail of
// a server's log for failure messages.
package testserver

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
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

// Start starts cmd in a process group of its own, so that a Ctrl-C at the
// terminal (SIGINT to the foreground group) reaches only the test binary,
// and returns a channel closed once cmd has exited and been waited for.
// It starts cmd from a goroutine that keeps its OS thread until cmd exits:
// a parent-death signal (SysProcAttr.Pdeathsig, set by the caller) is sent
// when the thread that started the child ends, not the process.
func Start(cmd *exec.Cmd) (exited <-chan struct{}, err error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	started := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return done, nil
}
