/* The sandbox's launcher on the host (built by rewards/code_tests.py, run by rewards/sandbox.py):
 * join the slot's cgroups, set the rlimits, and exec the sandbox, in one process. (It replaces a
 * shell that wrote the cgroup files and prlimit: two execs per run.)
 *
 *     da_launch [--cgroup PROCS_FILE]... [--RESOURCE=LIMIT]... -- COMMAND [ARG]...
 *
 * RESOURCE is one of cpu (seconds), as, fsize (bytes), nproc, nofile, core; soft and hard limits are
 * both set. Any failure exits with status 125 before the command runs. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static const struct { const char *name; int resource; } LIMITS[] = {
    {"cpu", RLIMIT_CPU}, {"as", RLIMIT_AS}, {"fsize", RLIMIT_FSIZE},
    {"nproc", RLIMIT_NPROC}, {"nofile", RLIMIT_NOFILE}, {"core", RLIMIT_CORE},
};

static int join(const char *procs) {
    FILE *f = fopen(procs, "w");
    if (!f) return -1;
    int ok = fprintf(f, "%d\n", (int)getpid()) > 0;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static int limit(const char *arg) {
    const char *eq = strchr(arg, '=');
    if (!eq) return -1;
    for (size_t i = 0; i < sizeof LIMITS / sizeof LIMITS[0]; i++) {
        if (strlen(LIMITS[i].name) == (size_t)(eq - arg) && !strncmp(arg, LIMITS[i].name, eq - arg)) {
            char *end;
            unsigned long long value = strtoull(eq + 1, &end, 10);
            if (*end) return -1;
            struct rlimit r = {(rlim_t)value, (rlim_t)value};
            return setrlimit(LIMITS[i].resource, &r);
        }
    }
    return -1;
}

int main(int argc, char **argv) {
    int i = 1;
    for (; i < argc && strcmp(argv[i], "--"); i++) {
        int bad = !strcmp(argv[i], "--cgroup") ? (i + 1 < argc ? join(argv[++i]) : -1)
                  : !strncmp(argv[i], "--", 2) ? limit(argv[i] + 2) : -1;
        if (bad) {
            fprintf(stderr, "da_launch: %s: %s\n", argv[i], strerror(errno ? errno : EINVAL));
            return 125;
        }
    }
    if (i + 1 >= argc) return 125;
    execv(argv[i + 1], argv + i + 1);
    fprintf(stderr, "da_launch: %s: %s\n", argv[i + 1], strerror(errno));
    return 125;
}
