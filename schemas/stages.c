/* stages.c — see stages.h. */
#include "stages.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "ms_common.h"

static const char *const s_stage_names[MS_STAGE_COUNT] = {"encode", "prefill", "decode"};

const char *ms_stage_name(ms_stage stage) {
    if ((int)stage < 0 || stage >= MS_STAGE_COUNT) return NULL;
    return s_stage_names[stage];
}

int ms_stages_parse(const char *text, uint32_t *out, char *err, size_t err_size) {
    assert(out);
    if (!text || text[0] == '\0') return ms_errf(err, err_size, "empty stage set");
    uint32_t mask = 0;
    const char *p = text;
    for (;;) {
        const char *plus = strchr(p, '+');
        size_t n = plus ? (size_t)(plus - p) : strlen(p);
        int found = -1;
        for (int s = 0; s < MS_STAGE_COUNT; s++) {
            const char *name = s_stage_names[s];
            if (strlen(name) == n && strncmp(p, name, n) == 0) found = s;
        }
        if (found < 0)
            return ms_errf(err, err_size,
                           "stage set \"%s\": unknown stage \"%.*s\" (expected "
                           "encode, prefill, decode joined by '+')",
                           text, (int)MS_MIN(n, 64), p);
        if (mask & MS_STAGE_BIT(found))
            return ms_errf(err, err_size, "stage set \"%s\": stage \"%s\" given twice", text,
                           s_stage_names[found]);
        mask |= MS_STAGE_BIT(found);
        if (!plus) break;
        p = plus + 1;
    }
    *out = mask;
    return 0;
}

const char *ms_stages_name(uint32_t stages, char *buf, size_t buf_size) {
    assert(buf && buf_size > 0);
    buf[0] = '\0';
    if (stages == 0 || (stages & ~MS_STAGES_ALL) != 0) return buf;
    size_t used = 0;
    for (int s = 0; s < MS_STAGE_COUNT; s++) {
        if (!(stages & MS_STAGE_BIT(s))) continue;
        int w = snprintf(buf + used, buf_size - used, "%s%s", used ? "+" : "", s_stage_names[s]);
        if (w < 0 || (size_t)w >= buf_size - used) {
            buf[0] = '\0';
            return buf;
        }
        used += (size_t)w;
    }
    return buf;
}

int ms_actor_state_parse(const char *text, ms_actor_state *state) {
    if (text && strcmp(text, "up") == 0) {
        *state = MS_ACTOR_UP;
        return 0;
    }
    if (text && strcmp(text, "draining") == 0) {
        *state = MS_ACTOR_DRAINING;
        return 0;
    }
    return -1;
}

const char *ms_actor_state_name(ms_actor_state state) {
    return state == MS_ACTOR_DRAINING ? "draining" : "up";
}
