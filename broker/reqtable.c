/* reqtable.c — see reqtable.h. */
#include "reqtable.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ms_common.h"

#define S_RID_KEY_MAX    24  /* "%016" PRIx64 + NUL */
#define S_ROUTE_MAX      256 /* zmq routing ids are at most 255 bytes */
#define S_CLIENT_KEY_MAX (2 * S_ROUTE_MAX + 1 + MS_WIRE_MAX_ID_BYTES + 1)

static const char *const S_STATE_NAMES[MS_REQ_STATE_COUNT] = {
    "queued", "encoding", "encoded",   "prefilling", "decoding",
    "done",   "failed",   "cancelled", "timed_out",
};

const char *ms_req_state_name(ms_req_state s) {
    return (unsigned)s < MS_REQ_STATE_COUNT ? S_STATE_NAMES[s] : "?";
}

bool ms_req_state_final(ms_req_state s) {
    return s == MS_REQ_DONE || s == MS_REQ_FAILED || s == MS_REQ_CANCELLED || s == MS_REQ_TIMED_OUT;
}

void ms_req_append_generated(ms_req *r, const int32_t *ids, int n) {
    assert(n >= 0);
    if (r->n_generated + n > r->cap_generated) {
        int cap = r->cap_generated ? r->cap_generated : 64;
        while (cap < r->n_generated + n)
            cap *= 2;
        r->generated = ms_xrealloc(r->generated, (size_t)cap * sizeof(int32_t));
        r->cap_generated = cap;
    }
    if (n > 0) memcpy(r->generated + r->n_generated, ids, (size_t)n * sizeof(int32_t));
    r->n_generated += n;
}

static void s_rid_key(uint64_t rid, char key[S_RID_KEY_MAX]) {
    snprintf(key, S_RID_KEY_MAX, "%016" PRIx64, rid);
}

/* hex(route) "/" client_id; false if the id does not fit. */
static bool s_client_key(zframe_t *route, const char *client_id, char key[S_CLIENT_KEY_MAX]) {
    static const char hex[] = "0123456789abcdef";
    size_t n = route ? zframe_size(route) : 0;
    const uint8_t *d = route ? zframe_data(route) : NULL;
    if (n > S_ROUTE_MAX || strlen(client_id) > MS_WIRE_MAX_ID_BYTES) return false;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        key[k++] = hex[d[i] >> 4];
        key[k++] = hex[d[i] & 15];
    }
    key[k++] = '/';
    strcpy(key + k, client_id);
    return true;
}

void ms_reqtable_init(ms_reqtable *t) {
    memset(t, 0, sizeof(*t));
    t->by_rid = zhashx_new();
    t->by_client = zhashx_new();
    t->next_rid = 1;
}

void ms_reqtable_fini(ms_reqtable *t) {
    while (t->head) {
        ms_req *r = t->head;
        ms_reqtable_remove(t, &r);
    }
    zhashx_destroy(&t->by_rid);
    zhashx_destroy(&t->by_client);
    memset(t, 0, sizeof(*t));
}

ms_req *ms_reqtable_add(ms_reqtable *t, zframe_t *route, const char *client_id) {
    char ckey[S_CLIENT_KEY_MAX];
    if (!s_client_key(route, client_id, ckey)) return NULL;
    if (zhashx_lookup(t->by_client, ckey)) return NULL;
    ms_req *r = ms_xcalloc(1, sizeof(*r));
    r->rid = t->next_rid++;
    r->client_id = ms_xstrdup(client_id);
    r->route = route ? zframe_dup(route) : NULL;
    r->state = MS_REQ_QUEUED;
    r->text_actor = -1;
    r->decode_actor = -1;
    r->avoid_actor = -1;
    char rkey[S_RID_KEY_MAX];
    s_rid_key(r->rid, rkey);
    int rc1 = zhashx_insert(t->by_rid, rkey, r);
    int rc2 = zhashx_insert(t->by_client, ckey, r);
    assert(rc1 == 0 && rc2 == 0);
    (void)rc1;
    (void)rc2;
    r->prev = t->tail;
    if (t->tail)
        t->tail->next = r;
    else
        t->head = r;
    t->tail = r;
    t->n++;
    return r;
}

ms_req *ms_reqtable_find(const ms_reqtable *t, uint64_t rid) {
    char rkey[S_RID_KEY_MAX];
    s_rid_key(rid, rkey);
    return zhashx_lookup(t->by_rid, rkey);
}

ms_req *ms_reqtable_find_client(const ms_reqtable *t, zframe_t *route, const char *client_id) {
    char ckey[S_CLIENT_KEY_MAX];
    if (!s_client_key(route, client_id, ckey)) return NULL;
    return zhashx_lookup(t->by_client, ckey);
}

void ms_reqtable_remove(ms_reqtable *t, ms_req **r_p) {
    ms_req *r = *r_p;
    if (!r) return;
    char rkey[S_RID_KEY_MAX];
    s_rid_key(r->rid, rkey);
    zhashx_delete(t->by_rid, rkey);
    char ckey[S_CLIENT_KEY_MAX];
    if (s_client_key(r->route, r->client_id, ckey)) zhashx_delete(t->by_client, ckey);
    if (r->prev)
        r->prev->next = r->next;
    else
        t->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        t->tail = r->prev;
    t->n--;
    for (int i = 0; i < r->n_images; i++)
        zframe_destroy(&r->images[i].bytes);
    free(r->images);
    free(r->prompt);
    free(r->generated);
    free(r->client_id);
    free(r->kv_key);
    free(r->kv_ep);
    zframe_destroy(&r->route);
    free(r);
    *r_p = NULL;
}
