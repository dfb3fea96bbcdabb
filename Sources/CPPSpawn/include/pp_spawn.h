// Starting worker processes safely: own process group, parent-death signal, empty
// signal mask, default signal handlers, no inherited descriptors past stdio.
#ifndef PP_SPAWN_H
#define PP_SPAWN_H

#include <sys/types.h>

/// What failed when pp_spawn returns an error: creating a pipe, or starting the
/// program (fork, the child's setup, execve).
#define PP_SPAWN_STEP_PIPE 1
#define PP_SPAWN_STEP_START 2

/// Starts `path` (an absolute or relative path: no PATH lookup here, the caller
/// resolves it before) with `argv` and `envp`, with pipes on its stdin and stdout and
/// our stderr.
///
/// The child, between fork and execve (async-signal-safe calls only):
/// - becomes the leader of its own process group (setpgid(0, 0); the parent calls
///   setpgid(pid, pid) too, so the group exists when pp_spawn returns);
/// - asks for SIGKILL when its parent dies (PR_SET_PDEATHSIG, Linux), then exits at
///   once if the parent already died;
/// - resets every catchable signal to SIG_DFL and empties its signal mask;
/// - gets the pipes on fds 0 and 1 and closes every other fd >= 3.
///
/// PR_SET_PDEATHSIG fires when the *thread* that called fork exits, not the process:
/// call this from a thread that lives at least as long as the child should.
///
/// @return 0 on success, with `*pid`, `*stdin_write` (ours, CLOEXEC) and
///   `*stdout_read` (ours, CLOEXEC) set; otherwise the errno of the failure, with
///   `*failed_step` set to PP_SPAWN_STEP_*. An execve failure in the child is reported
///   through a CLOEXEC pipe, and the failed child is reaped before this returns.
int pp_spawn(const char *path, char *const argv[], char *const envp[],
             pid_t *pid, int *stdin_write, int *stdout_read, int *failed_step);

/// Non-blocking check whether process `pid` (our child) has ended, without reaping it
/// (waitid with WNOWAIT): while it is a zombie its pid, and the id of the process group
/// it leads, cannot be reused, so the caller may still signal the group safely.
///
/// @return 1 when it has ended, 0 when it still runs, -1 on error (errno set; ECHILD
///   when it is not our child or was reaped already).
int pp_child_ended(pid_t pid);

/// Reaps `pid` (blocking; call it only after pp_child_ended returned 1) and returns
/// its wait status as waitpid reports it, or -1 on error.
int pp_reap(pid_t pid);

#endif
