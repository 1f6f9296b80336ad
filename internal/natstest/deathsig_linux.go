package natstest

import "syscall"

// setDeathSignal makes the server stop when the test binary dies, even when
// it exits without Main or is killed. SIGKILL: the server's data is thrown
// away, so there is nothing for it to save, and the next server start removes
// the directory it leaves behind.
func setDeathSignal(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }
