package agent

// The program a console runs on its pty slave (ConsoleConfig.Exec),
// restarted with backoff while the port lives, stopped with SIGTERM then
// SIGKILL.

import (
	"errors"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/vserial/vserial/internal/guard"
	"golang.org/x/sys/unix"
)

// runProgram runs ConsoleConfig.Exec on the slave until the port's context
// ends, restarting it with backoff.
func (c *ptyConsole) runProgram() {
	defer guard.Recover()
	a, pt := c.pt.a, c.pt
	defer a.wg.Done()
	defer close(c.progDone)
	cfg := a.console
	env := cfg.Env
	if env == nil {
		env = MinimalEnv
	}
	delay := cfg.RestartMin
	for {
		start := time.Now()
		cmd := exec.Command(cfg.Exec[0], cfg.Exec[1:]...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = c.slave, c.slave, c.slave
		cmd.Env = env
		cmd.Dir = "/"
		// A session of its own with the slave (its fd 0) as controlling
		// terminal, like getty gives a login shell.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		if err := cmd.Start(); err != nil {
			pt.log.Error("console program cannot start", "program", cfg.Exec[0], "err", err)
		} else {
			pt.log.Info("console program started", "program", cfg.Exec[0], "pid", cmd.Process.Pid, "pty", c.tty)
			waited := make(chan error, 1)
			go func() {
				defer guard.Recover()
				waited <- cmd.Wait()
			}()
			select {
			case err := <-waited:
				pt.log.Warn("console program exited", "program", cfg.Exec[0], "pid", cmd.Process.Pid, "status", exitStatus(err))
			case <-c.ctx.Done():
				stopProgram(cmd, waited)
				pt.log.Info("console program stopped", "program", cfg.Exec[0], "pid", cmd.Process.Pid)
				return
			}
		}
		if time.Since(start) >= restartReset {
			delay = cfg.RestartMin
		}
		pt.log.Info("console program restarts", "in", delay.String())
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-c.ctx.Done():
			t.Stop()
			return
		}
		delay = min(2*delay, cfg.RestartMax)
	}
}

// stopProgram ends the program's process group: SIGHUP and SIGTERM (what
// a terminal hang-up and a shutdown send), SIGKILL after stopGrace.
func stopProgram(cmd *exec.Cmd, waited <-chan error) {
	pgid := cmd.Process.Pid // Setsid: the program leads its own group
	_ = unix.Kill(-pgid, unix.SIGHUP)
	_ = unix.Kill(-pgid, unix.SIGTERM)
	t := time.NewTimer(stopGrace)
	defer t.Stop()
	select {
	case <-waited:
		_ = unix.Kill(-pgid, unix.SIGKILL) // what is left of the group
	case <-t.C:
		_ = unix.Kill(-pgid, unix.SIGKILL)
		<-waited
	}
}

func exitStatus(err error) string {
	if err == nil {
		return "exit 0"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "signal " + ws.Signal().String()
		}
		return "exit " + strconv.Itoa(ee.ExitCode())
	}
	return err.Error()
}
