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
    const char *tmp = getenv("TMPDIR"), *cc = getenv("CC");
    cc = cc && *cc ? cc : "cc";
    char dir[512];
    snprintf(dir, sizeof dir, "%s/weft-cc-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        snprintf(log, n, "cannot make a directory for the C compiler in %s: %s", tmp && *tmp ? tmp : "/tmp", strerror(errno));
        return -1;
    }
    /* one shell: every unit's compile in the background, then the link once all succeeded */
    size_t cap = 4096 + (size_t)n_sources * 2048, m = 0;
    char *cmd = malloc(cap), out[600];
    snprintf(out, sizeof out, "%s/cc.log", dir);
    int written = 0;
    for (int i = 0; i < n_sources && cmd; i++, written++) {
        char src[600];
        snprintf(src, sizeof src, "%s/unit%d.c", dir, i);
        FILE *f = fopen(src, "w");
        if (!f || fputs(sources[i], f) < 0 || fclose(f)) {
            snprintf(log, n, "cannot write %s: %s", src, strerror(errno));
            break;
        }
        m += (size_t)snprintf(cmd + m, cap - m, "%s " CC_COMPILE_FLAGS " -c -o '%s/unit%d.o' '%s' > '%s/unit%d.log' 2>&1 & p%d=$!; ", cc,
                              dir, i, src, dir, i, i);
    }
    int status = -1;
    if (cmd && written == n_sources) {
        m += (size_t)snprintf(cmd + m, cap - m, "ok=1; ");
        for (int i = 0; i < n_sources; i++)
            m += (size_t)snprintf(cmd + m, cap - m, "wait $p%d || ok=0; ", i);
        m += (size_t)snprintf(cmd + m, cap - m, "cat '%s'/unit*.log > '%s'; [ $ok = 1 ] && %s " CC_LINK_FLAGS " -o '%s'", dir, out, cc,
                              so_path);
        for (int i = 0; i < n_sources; i++)
            m += (size_t)snprintf(cmd + m, cap - m, " '%s/unit%d.o'", dir, i);
        m += (size_t)snprintf(cmd + m, cap - m, " -lm >> '%s' 2>&1", out);
        if (m < cap)
            status = system(cmd);
    }
    free(cmd);
    FILE *l = fopen(out, "r");
    if (l) {
        log[fread(log, 1, n - 1, l)] = 0;
        fclose(l);
    }
    for (int i = 0; i < written; i++) {
        const char *ext[] = {"c", "o", "log"};
        for (int e = 0; e < 3; e++) {
            char path[600];
            snprintf(path, sizeof path, "%s/unit%d.%s", dir, i, ext[e]);
            unlink(path);
        }
    }
    unlink(out);
    rmdir(dir);
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status)) {
        if (!log[0])
            snprintf(log, n, "%s failed (status %d)", cc, status);
        return -1;
    }
    return 0;
}
