package pgtest

import "syscall"

// setDeathSignal makes the child stop when the test binary dies, even when it
// exits without Main or is killed. SIGQUIT rather than SIGKILL: it is an
// immediate shutdown for postgres, which still removes its shared memory and
// postmaster.pid (and makes initdb remove what it created).
func setDeathSignal(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGQUIT }
