//go:build !linux

package natstest

import "syscall"

// setDeathSignal does nothing: only Linux can kill a child when its parent
// dies, so elsewhere a test binary that exits without Main leaves its servers
// running.
func setDeathSignal(*syscall.SysProcAttr) {}
