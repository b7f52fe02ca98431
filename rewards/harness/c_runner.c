/* The trusted main of a C/C++ test run (rewards/harness/c_harness.py builds the rest).
 *
 *     c_runner NONCE_FD VERDICT_FD ./unit.so
 *
 * unit.so holds the program's unit and the tests' unit, whose `main` was compiled as
 * `da_tests_main` (with NDEBUG undefined, so the program's macros never reach the tests' asserts).
 * The nonce is read and its fd closed, and the verdict fd moved, before the program's code first
 * runs (its constructors run at dlopen); the verdict "<nonce> <passed> 1 <reason>" is written only
 * when da_tests_main has returned. An exit, abort or signal before that leaves no verdict. The
 * program shares this process, so it could forge a verdict only by finding the nonce in this
 * function's stack frame. */
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    char nonce[80];
    int nonce_fd = atoi(argv[1]), verdict_fd = atoi(argv[2]);
    ssize_t n = read(nonce_fd, nonce, sizeof nonce - 1);
    close(nonce_fd);
    if (n <= 0) return 2;
    nonce[n] = 0;
    struct rlimit files;
    getrlimit(RLIMIT_NOFILE, &files);
    int hidden = fcntl(verdict_fd, F_DUPFD_CLOEXEC, (int)(files.rlim_cur / 2 + getpid() % (files.rlim_cur / 4 + 1)));
    if (hidden < 0) return 5;
    close(verdict_fd);
    void *unit = dlopen(argv[3], RTLD_NOW | RTLD_LOCAL);
    if (!unit) {
        fprintf(stderr, "%s\n", dlerror());
        return 3;
    }
    int (*tests)(void) = (int (*)(void))dlsym(unit, "da_tests_main");
    if (!tests) return 4;
    int rc = tests();
    fflush(stdout);
    fflush(stderr);
    char line[160];
    int len = snprintf(line, sizeof line, "%s %d 1 %s\n", nonce, rc == 0, rc == 0 ? "passed" : "tests returned non-zero");
    if (write(hidden, line, (size_t)len) != len) return 6;
    _exit(0);
}
