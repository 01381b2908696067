/* cc.c: the system C compiler, run on generated source (see cc.h). */
#include "cc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int cc_shared_object(const char *const *sources, int n_sources, const char *so_path, char *log, size_t n)
{
    log[0] = 0;
    const char *tmp = getenv("TMPDIR");
    char dir[512];
    snprintf(dir, sizeof dir, "%s/weft-cc-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        snprintf(log, n, "cannot make a directory for the C compiler in %s: %s", tmp && *tmp ? tmp : "/tmp", strerror(errno));
        return -1;
    }
    char out[600], files[8192] = "";
    snprintf(out, sizeof out, "%s/cc.log", dir);
    size_t m = 0;
    int written = 0;
    for (int i = 0; i < n_sources; i++, written++) {
        char src[600];
        snprintf(src, sizeof src, "%s/unit%d.c", dir, i);
        FILE *f = fopen(src, "w");
        if (!f || fputs(sources[i], f) < 0 || fclose(f)) {
            snprintf(log, n, "cannot write %s: %s", src, strerror(errno));
            break;
        }
        m += (size_t)snprintf(files + m, sizeof files - m, " '%s'", src);
    }
    int status = -1;
    const char *cc = getenv("CC");
    if (written == n_sources && m < sizeof files) {
        char cmd[10000];
        snprintf(cmd, sizeof cmd, "%s " CC_FLAGS " -o '%s'%s -lm > '%s' 2>&1",
                 cc && *cc ? cc : "cc", so_path, files, out);
        status = system(cmd);
    }
    FILE *l = fopen(out, "r");
    if (l) {
        log[fread(log, 1, n - 1, l)] = 0;
        fclose(l);
    }
    for (int i = 0; i < written; i++) {
        char src[600];
        snprintf(src, sizeof src, "%s/unit%d.c", dir, i);
        unlink(src);
    }
    unlink(out);
    rmdir(dir);
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status)) {
        if (!log[0])
            snprintf(log, n, "%s failed (status %d)", cc && *cc ? cc : "cc", status);
        return -1;
    }
    return 0;
}
