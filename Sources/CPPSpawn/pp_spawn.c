#define _GNU_SOURCE
#include "pp_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

/// Closes every descriptor >= 3 except `keep` (async-signal-safe: raw system calls).
static void close_other_fds(int keep) {
#ifdef SYS_close_range
    int ok = 1;
    if (keep > 3 && syscall(SYS_close_range, 3u, (unsigned)(keep - 1), 0u) != 0) ok = 0;
    if (ok && syscall(SYS_close_range, (unsigned)(keep + 1), ~0u, 0u) == 0) return;
#endif
    // Old kernels: close one by one up to the descriptor limit.
    struct rlimit rl;
    long max = 65536;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) max = (long)rl.rlim_cur;
    if (max > (1L << 20)) max = 1L << 20;
    for (long fd = 3; fd < max; fd++) {
        if (fd != keep) close((int)fd);
    }
}

/// Reports `err` to the parent and exits; the child's only way out before execve.
static void child_fail(int report, int err) {
    ssize_t n;
    do { n = write(report, &err, sizeof err); } while (n < 0 && errno == EINTR);
    _exit(127);
}

int pp_spawn(const char *path, char *const argv[], char *const envp[],
             pid_t *out_pid, int *out_stdin, int *out_stdout, int *failed_step) {
    int to_child[2], from_child[2], report[2];
    *failed_step = PP_SPAWN_STEP_PIPE;
    if (pipe2(to_child, O_CLOEXEC) != 0) return errno;
    if (pipe2(from_child, O_CLOEXEC) != 0) {
        int e = errno;
        close(to_child[0]); close(to_child[1]);
        return e;
    }
    if (pipe2(report, O_CLOEXEC) != 0) {
        int e = errno;
        close(to_child[0]); close(to_child[1]); close(from_child[0]); close(from_child[1]);
        return e;
    }
    *failed_step = PP_SPAWN_STEP_START;
    pid_t parent = getpid();

    // Block every signal across fork: the child must not run one of our handlers
    // before it has reset them.
    sigset_t all, saved;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &saved);
    pid_t pid = fork();
    if (pid == 0) {
        // Child: async-signal-safe calls only from here to execve.
        setpgid(0, 0);
#ifdef __linux__
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) child_fail(report[1], errno);
        // The parent (thread) may have died before prctl: then nobody would kill us.
        if (getppid() != parent) child_fail(report[1], ESRCH);
#endif
        // Move our three descriptors above 2 first, so that no dup2 below clobbers
        // one of them (our parent may run with fd 0 or 1 closed).
        int in = fcntl(to_child[0], F_DUPFD_CLOEXEC, 3);
        int out = fcntl(from_child[1], F_DUPFD_CLOEXEC, 3);
        int rep = fcntl(report[1], F_DUPFD_CLOEXEC, 3);
        if (rep < 0) _exit(127);
        if (in < 0 || out < 0) child_fail(rep, errno);
        if (dup2(in, 0) < 0 || dup2(out, 1) < 0) child_fail(rep, errno);  // dup2 clears CLOEXEC
        close_other_fds(rep);
        // Default dispositions (SIG_IGN would survive execve), then an empty mask.
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        sigemptyset(&dfl.sa_mask);
        for (int sig = 1; sig < NSIG; sig++) {
            if (sig == SIGKILL || sig == SIGSTOP) continue;
            (void)sigaction(sig, &dfl, NULL);  // EINVAL for glibc's reserved ones: fine
        }
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execve(path, argv, envp);
        child_fail(rep, errno);
    }
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    close(to_child[0]);
    close(from_child[1]);
    close(report[1]);
    if (pid < 0) {
        close(to_child[1]); close(from_child[0]); close(report[0]);
        return fork_errno;
    }
    // Close the race with the child's own setpgid: the group must exist before we
    // (or killAll) signal it. EACCES after the child's execve is fine: it did it itself.
    (void)setpgid(pid, pid);
    int child_errno = 0;
    ssize_t n;
    do { n = read(report[0], &child_errno, sizeof child_errno); } while (n < 0 && errno == EINTR);
    close(report[0]);
    if (n != 0) {
        // The child failed before or at execve (n == sizeof child_errno), or exited
        // before writing (getppid check): reap it and report.
        if (n != (ssize_t)sizeof child_errno || child_errno == 0) child_errno = ECHILD;
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        close(to_child[1]); close(from_child[0]);
        return child_errno;
    }
    *out_pid = pid;
    *out_stdin = to_child[1];
    *out_stdout = from_child[0];
    return 0;
}

int pp_child_ended(pid_t pid) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    int rc;
    do { rc = waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT); } while (rc < 0 && errno == EINTR);
    if (rc < 0) return -1;
    return info.si_pid == pid ? 1 : 0;
}

int pp_reap(pid_t pid) {
    int status = 0;
    pid_t rc;
    do { rc = waitpid(pid, &status, 0); } while (rc < 0 && errno == EINTR);
    return rc == pid ? status : -1;
}
