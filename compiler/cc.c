/* cc.c: the system C compiler, run on generated source (see cc.h). */
#include "cc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int cc_shared_object(const char *source, const char *so_path, char *log, size_t n)
{
    log[0] = 0;
    const char *tmp = getenv("TMPDIR");
    char dir[512];
    snprintf(dir, sizeof dir, "%s/weft-cc-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        snprintf(log, n, "cannot make a directory for the C compiler in %s: %s", tmp && *tmp ? tmp : "/tmp", strerror(errno));
        return -1;
    }
    char src[600], out[600];
    snprintf(src, sizeof src, "%s/kernels.c", dir);
    snprintf(out, sizeof out, "%s/cc.log", dir);
    FILE *f = fopen(src, "w");
    if (!f || fputs(source, f) < 0 || fclose(f)) {
        snprintf(log, n, "cannot write %s: %s", src, strerror(errno));
        rmdir(dir);
        return -1;
    }
    const char *cc = getenv("CC");
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s -std=c11 -O3 -fno-math-errno -fPIC -shared -o '%s' '%s' -lm > '%s' 2>&1",
             cc && *cc ? cc : "cc", so_path, src, out);
    int status = system(cmd);
    FILE *l = fopen(out, "r");
    size_t got = l ? fread(log, 1, n - 1, l) : 0;
    log[got] = 0;
    if (l)
        fclose(l);
    unlink(src);
    unlink(out);
    rmdir(dir);
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status)) {
        if (!got)
            snprintf(log, n, "%s failed (status %d)", cc && *cc ? cc : "cc", status);
        return -1;
    }
    return 0;
}
