/* test_policy.c — the broker's pure policies on hand-worked synthetic states:
 * encoder choice and the many-image split, text and decode routing, layouts,
 * slack ordering, batch caps, decode admission and overload rejection. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "ms_common.h"
#include "policy.h"
#include "profile.h"

/* An up, alive actor with the given stages and loads. */
static ms_actor_view s_actor(int32_t id, uint32_t stages, int64_t img, int64_t prompt,
                             int32_t running, int32_t free_kv) {
    ms_actor_view a;
    memset(&a, 0, sizeof(a));
    a.id = id;
    a.stages = stages;
    a.state = MS_ACTOR_UP;
    a.alive = true;
    a.queued_image_tokens = img;
    a.queued_prompt_tokens = prompt;
    a.running_seqs = running;
    a.free_kv_blocks = free_kv;
    return a;
}

static ms_req_view s_req(uint64_t rid, int64_t arrival, int32_t ttft, const int32_t *img,
                         int32_t n_images, int32_t text_tokens) {
    ms_req_view r;
    memset(&r, 0, sizeof(r));
    r.rid = rid;
    r.arrival_ms = arrival;
    r.ttft_deadline_ms = arrival + ttft;
    r.modality = n_images > 0 ? MS_MODALITY_IMAGE : MS_MODALITY_TEXT;
    r.n_images = n_images;
    r.image_tokens = img;
    r.prompt_tokens = text_tokens;
    for (int32_t i = 0; i < n_images; i++)
        r.prompt_tokens += img[i];
    r.max_tokens = 64;
    return r;
}

/* ---- stage sets and layouts ------------------------------------------------ */

Test(policy, stage_sets_parse_and_name, .timeout = 10) {
    uint32_t m = 0;
    char err[MS_ERR_SIZE], buf[MS_STAGES_NAME_MAX];
    cr_assert_eq(ms_stages_parse("encode", &m, err, sizeof(err)), 0);
    cr_assert_eq(m, MS_STAGES_ENCODE);
    cr_assert_eq(ms_stages_parse("prefill+decode", &m, err, sizeof(err)), 0);
    cr_assert_eq(m, MS_STAGES_TEXT);
    cr_assert_eq(ms_stages_parse("decode+encode+prefill", &m, err, sizeof(err)), 0);
    cr_assert_eq(m, MS_STAGES_ALL);
    cr_assert_str_eq(ms_stages_name(m, buf, sizeof(buf)), "encode+prefill+decode");
    cr_assert_str_eq(ms_stages_name(MS_STAGES_TEXT, buf, sizeof(buf)), "prefill+decode");
    cr_assert_str_eq(ms_stages_name(0, buf, sizeof(buf)), "");
    cr_assert_eq(ms_stages_parse("encode+encode", &m, err, sizeof(err)), -1);
    cr_assert(strstr(err, "twice"), "%s", err);
    cr_assert_eq(ms_stages_parse("prefil", &m, err, sizeof(err)), -1);
    cr_assert(strstr(err, "prefil"), "%s", err);
    cr_assert_eq(ms_stages_parse("", &m, err, sizeof(err)), -1);
    cr_assert_eq(ms_stages_parse("encode+", &m, err, sizeof(err)), -1);
}

Test(policy, layouts_map_stages_to_actor_sets, .timeout = 10) {
    ms_layout l;
    char err[MS_ERR_SIZE];
    cr_assert_eq(ms_layout_parse("modserve", &l, err, sizeof(err)), 0);
    cr_assert_eq(l, MS_LAYOUT_MODSERVE);
    cr_assert_eq(ms_layout_parse("disagg", &l, err, sizeof(err)), 0);
    cr_assert_eq(l, MS_LAYOUT_DISAGG);
    cr_assert_eq(ms_layout_parse("mono", &l, err, sizeof(err)), -1);
    cr_assert(strstr(err, "mono"));
    cr_assert_str_eq(ms_layout_name(MS_LAYOUT_MONOLITH), "monolith");

    const ms_layout_info *ms = ms_layout_get(MS_LAYOUT_MODSERVE);
    cr_assert_eq(ms->stages[MS_STAGE_ENCODE], MS_STAGES_ENCODE);
    cr_assert_eq(ms->stages[MS_STAGE_PREFILL], MS_STAGES_TEXT);
    cr_assert_eq(ms->stages[MS_STAGE_DECODE], MS_STAGES_TEXT);
    cr_assert(ms->split_images && !ms->decode_handoff);

    const ms_layout_info *mo = ms_layout_get(MS_LAYOUT_MONOLITH);
    for (int s = 0; s < MS_STAGE_COUNT; s++)
        cr_assert_eq(mo->stages[s], MS_STAGES_ALL);
    cr_assert(!mo->split_images && !mo->decode_handoff);

    cr_assert_eq(ms_layout_stages_for(MS_LAYOUT_DISAGG, MS_STAGE_ENCODE), MS_STAGES_ENCODE);
    cr_assert_eq(ms_layout_stages_for(MS_LAYOUT_DISAGG, MS_STAGE_PREFILL), MS_STAGES_PREFILL);
    cr_assert_eq(ms_layout_stages_for(MS_LAYOUT_DISAGG, MS_STAGE_DECODE), MS_STAGES_DECODE);
    cr_assert(ms_layout_get(MS_LAYOUT_DISAGG)->decode_handoff);
}

/* ---- encode routing ---------------------------------------------------------- */

Test(policy, encode_picks_least_queued_image_tokens, .timeout = 10) {
    ms_actor_view a[4] = {
        s_actor(0, MS_STAGES_ENCODE, 500, 0, 0, 0), s_actor(1, MS_STAGES_ENCODE, 100, 0, 0, 0),
        s_actor(2, MS_STAGES_ENCODE, 300, 0, 0, 0),
        s_actor(3, MS_STAGES_TEXT, 0, 0, 0, 100), /* idle, but not an encoder */
    };
    int32_t img[1] = {729};
    ms_req_view r = s_req(1, 0, 1000, img, 1, 20);
    int32_t out[1] = {-1};
    cr_assert_eq(ms_policy_route_encode(a, 4, &r, MS_STAGES_ENCODE, NULL, out), MS_ROUTE_OK);
    cr_assert_eq(out[0], 1);

    /* Equal load: fewer in-flight encode tasks wins, then the lower index. */
    a[0].queued_image_tokens = a[1].queued_image_tokens = a[2].queued_image_tokens = 0;
    a[0].inflight[MS_STAGE_ENCODE] = 2;
    a[1].inflight[MS_STAGE_ENCODE] = 1;
    a[2].inflight[MS_STAGE_ENCODE] = 1;
    cr_assert_eq(ms_policy_route_encode(a, 4, &r, MS_STAGES_ENCODE, NULL, out), MS_ROUTE_OK);
    cr_assert_eq(out[0], 1);
}

Test(policy, six_images_split_over_two_encoders, .timeout = 10) {
    ms_actor_view a[2] = {s_actor(0, MS_STAGES_ENCODE, 0, 0, 0, 0),
                          s_actor(1, MS_STAGES_ENCODE, 0, 0, 0, 0)};
    /* Hand-worked LPT: order 0(400) 2(300) 3(200) 1(100) 4(100) 5(50);
     * loads: e0 400 | e1 300 | e1 500 | e0 500 | tie → e0 600 | e1 550. */
    int32_t img[6] = {400, 100, 300, 200, 100, 50};
    ms_req_view r = s_req(7, 0, 1000, img, 6, 30);
    int32_t out[6];
    cr_assert_eq(ms_policy_route_encode(a, 2, &r, MS_STAGES_ENCODE, NULL, out), MS_ROUTE_OK);
    int32_t want[6] = {0, 0, 1, 1, 0, 1};
    for (int i = 0; i < 6; i++)
        cr_assert_eq(out[i], want[i], "image %d: %d", i, out[i]);

    /* Identical images: 3 and 3. */
    int32_t same[6] = {729, 729, 729, 729, 729, 729};
    r = s_req(8, 0, 1000, same, 6, 30);
    cr_assert_eq(ms_policy_route_encode(a, 2, &r, MS_STAGES_ENCODE, NULL, out), MS_ROUTE_OK);
    int per[2] = {0, 0};
    for (int i = 0; i < 6; i++)
        per[out[i]]++;
    cr_assert_eq(per[0], 3);
    cr_assert_eq(per[1], 3);

    /* The charge adds the tokens and one in-flight task per encoder used. */
    ms_policy_charge_encode(a, 2, &r, out);
    cr_assert_eq(a[0].queued_image_tokens, 3 * 729);
    cr_assert_eq(a[1].queued_image_tokens, 3 * 729);
    cr_assert_eq(a[0].inflight[MS_STAGE_ENCODE], 1);
    cr_assert_eq(a[1].inflight[MS_STAGE_ENCODE], 1);
}

Test(policy, six_images_split_over_three_encoders, .timeout = 10) {
    ms_actor_view a[3] = {s_actor(0, MS_STAGES_ENCODE, 0, 0, 0, 0),
                          s_actor(1, MS_STAGES_ENCODE, 200, 0, 0, 0),
                          s_actor(2, MS_STAGES_ENCODE, 0, 0, 0, 0)};
    /* loads 0/200/0: 0(400)→e0 400/200/0 | 2(300)→e2 400/200/300 | 3(200)→e1 400/400/300
     * | 1(100)→e2 400/400/400 | 4(100)→e0 500/400/400 | 5(50)→e1 500/450/400. */
    int32_t img[6] = {400, 100, 300, 200, 100, 50};
    ms_req_view r = s_req(9, 0, 1000, img, 6, 30);
    int32_t out[6];
    cr_assert_eq(ms_policy_route_encode(a, 3, &r, MS_STAGES_ENCODE, NULL, out), MS_ROUTE_OK);
    int32_t want[6] = {0, 2, 2, 1, 0, 1};
    for (int i = 0; i < 6; i++)
        cr_assert_eq(out[i], want[i], "image %d: %d", i, out[i]);

    int32_t same[6] = {729, 729, 729, 729, 729, 729};
    a[1].queued_image_tokens = 0;
    r = s_req(10, 0, 1000, same, 6, 30);
    cr_assert_eq(ms_policy_route_encode(a, 3, &r, MS_STAGES_ENCODE, NULL, out), MS_ROUTE_OK);
    int per[3] = {0, 0, 0};
    for (int i = 0; i < 6; i++)
        per[out[i]]++;
    for (int e = 0; e < 3; e++)
        cr_assert_eq(per[e], 2, "encoder %d got %d", e, per[e]);
}

Test(policy, draining_and_dead_encoders_never_chosen, .timeout = 10) {
    ms_actor_view a[4] = {
        s_actor(0, MS_STAGES_ENCODE, 0, 0, 0, 0), s_actor(1, MS_STAGES_ENCODE, 0, 0, 0, 0),
        s_actor(2, MS_STAGES_ENCODE, 100000, 0, 0, 0), s_actor(3, MS_STAGES_ENCODE, 0, 0, 0, 0)};
    a[0].state = MS_ACTOR_DRAINING;
    a[1].alive = false;
    a[3].alive = false;
    a[3].state = MS_ACTOR_DRAINING;
    int32_t img[6] = {10, 20, 30, 40, 50, 60};
    ms_req_view r = s_req(11, 0, 1000, img, 6, 10);
    int32_t out[6];
    cr_assert_eq(ms_policy_route_encode(a, 4, &r, MS_STAGES_ENCODE, NULL, out), MS_ROUTE_OK);
    for (int i = 0; i < 6; i++)
        cr_assert_eq(out[i], 2);

    a[2].alive = false;
    cr_assert_eq(ms_policy_route_encode(a, 4, &r, MS_STAGES_ENCODE, NULL, out), MS_ROUTE_NONE);
    cr_assert_eq(ms_policy_route_encode(a, 0, &r, MS_STAGES_ENCODE, NULL, out), MS_ROUTE_NONE);
}

Test(policy, text_requests_never_touch_encoders, .timeout = 10) {
    ms_actor_view a[3] = {s_actor(0, MS_STAGES_ENCODE, 0, 0, 0, 0), /* idle encoder */
                          s_actor(1, MS_STAGES_TEXT, 0, 900, 3, 100),
                          s_actor(2, MS_STAGES_TEXT, 0, 400, 3, 100)};
    ms_req_view r = s_req(12, 0, 1000, NULL, 0, 50);
    cr_assert_not(ms_req_needs_encode(&r));
    cr_assert_eq(ms_req_image_tokens(&r), 0);
    int32_t sentinel[2] = {-7, -7};
    cr_assert_eq(ms_policy_route_encode(a, 3, &r, MS_STAGES_ENCODE, NULL, sentinel), MS_ROUTE_OK);
    cr_assert_eq(sentinel[0], -7, "nothing may be written for a text request");
    ms_policy_charge_encode(a, 3, &r, sentinel);
    cr_assert_eq(a[0].queued_image_tokens, 0);
    cr_assert_eq(a[0].inflight[MS_STAGE_ENCODE], 0);

    int32_t t = -1;
    uint32_t need = ms_layout_stages_for(MS_LAYOUT_MODSERVE, MS_STAGE_PREFILL);
    cr_assert_eq(ms_policy_route_text(a, 3, &r, need, NULL, &t), MS_ROUTE_OK);
    cr_assert_eq(t, 2, "the encoder has the least load but no prefill stage");
    /* In disagg too, prefill work never lands on an encoder. */
    need = ms_layout_stages_for(MS_LAYOUT_DISAGG, MS_STAGE_PREFILL);
    cr_assert_eq(ms_policy_route_text(a, 3, &r, need, NULL, &t), MS_ROUTE_OK);
    cr_assert_neq(t, 0);
}

Test(policy, encode_limits_give_full_but_an_empty_encoder_takes_anything, .timeout = 10) {
    ms_actor_view a[2] = {s_actor(0, MS_STAGES_ENCODE, 900, 0, 0, 0),
                          s_actor(1, MS_STAGES_ENCODE, 950, 0, 0, 0)};
    ms_queue_limits lim = {0};
    lim.max_actor_image_tokens = 1000;
    int32_t img[1] = {200};
    ms_req_view r = s_req(13, 0, 1000, img, 1, 10);
    int32_t out[1];
    cr_assert_eq(ms_policy_route_encode(a, 2, &r, MS_STAGES_ENCODE, &lim, out), MS_ROUTE_FULL);
    a[1].queued_image_tokens = 0;
    int32_t huge[1] = {5000};
    r = s_req(14, 0, 1000, huge, 1, 10);
    cr_assert_eq(ms_policy_route_encode(a, 2, &r, MS_STAGES_ENCODE, &lim, out), MS_ROUTE_OK);
    cr_assert_eq(out[0], 1);
}

/* ---- text routing ------------------------------------------------------------ */

Test(policy, text_routes_by_pending_tokens_then_running_then_index, .timeout = 10) {
    ms_actor_view a[4] = {
        s_actor(0, MS_STAGES_TEXT, 0, 300, 0, 100), s_actor(1, MS_STAGES_TEXT, 0, 100, 5, 100),
        s_actor(2, MS_STAGES_TEXT, 0, 100, 2, 100), s_actor(3, MS_STAGES_ENCODE, 0, 0, 0, 0)};
    int32_t img[1] = {729};
    ms_req_view r = s_req(20, 0, 1000, img, 1, 40);
    int32_t t = -1;
    cr_assert_eq(ms_policy_route_text(a, 4, &r, MS_STAGES_TEXT, NULL, &t), MS_ROUTE_OK);
    cr_assert_eq(t, 2); /* 100 pending ties with actor 1; fewer running sequences */

    ms_policy_charge_prefill(a, 2, &r);
    cr_assert_eq(a[2].queued_prompt_tokens, 100 + 769);
    cr_assert_eq(a[2].inflight[MS_STAGE_PREFILL], 1);
    cr_assert_eq(ms_policy_route_text(a, 4, &r, MS_STAGES_TEXT, NULL, &t), MS_ROUTE_OK);
    cr_assert_eq(t, 1); /* now the least pending */

    a[0].queued_prompt_tokens = a[1].queued_prompt_tokens = a[2].queued_prompt_tokens = 0;
    a[0].running_seqs = a[1].running_seqs = a[2].running_seqs = 0;
    cr_assert_eq(ms_policy_route_text(a, 4, &r, MS_STAGES_TEXT, NULL, &t), MS_ROUTE_OK);
    cr_assert_eq(t, 0); /* full tie: lower index */

    a[0].state = MS_ACTOR_DRAINING;
    a[1].alive = false;
    cr_assert_eq(ms_policy_route_text(a, 4, &r, MS_STAGES_TEXT, NULL, &t), MS_ROUTE_OK);
    cr_assert_eq(t, 2);
    a[2].alive = false;
    cr_assert_eq(ms_policy_route_text(a, 4, &r, MS_STAGES_TEXT, NULL, &t), MS_ROUTE_NONE);
}

Test(policy, text_limits_and_monolith_layout, .timeout = 10) {
    ms_actor_view a[3] = {s_actor(0, MS_STAGES_TEXT, 0, 0, 0, 100),
                          s_actor(1, MS_STAGES_ALL, 0, 700, 0, 100),
                          s_actor(2, MS_STAGES_ALL, 0, 500, 0, 100)};
    ms_req_view r = s_req(21, 0, 1000, NULL, 0, 600);
    int32_t t = -1;
    uint32_t need = ms_layout_stages_for(MS_LAYOUT_MONOLITH, MS_STAGE_PREFILL);
    cr_assert_eq(ms_policy_route_text(a, 3, &r, need, NULL, &t), MS_ROUTE_OK);
    cr_assert_eq(t, 2, "a text instance is not a monolith actor");

    ms_queue_limits lim = {0};
    lim.max_actor_prompt_tokens = 1000;
    cr_assert_eq(ms_policy_route_text(a, 3, &r, need, &lim, &t), MS_ROUTE_FULL);
    a[1].queued_prompt_tokens = 0; /* an idle actor takes even an oversized prompt */
    r.prompt_tokens = 4000;
    cr_assert_eq(ms_policy_route_text(a, 3, &r, need, &lim, &t), MS_ROUTE_OK);
    cr_assert_eq(t, 1);
}

/* ---- decode admission and routing ---------------------------------------- */

Test(policy, decode_cap_from_profile_and_tbt, .timeout = 10) {
    ms_profile p;
    ms_profile_default(&p);
    p.stage[MS_STAGE_DECODE].base_ms = 5.0;
    p.stage[MS_STAGE_DECODE].per_unit_ms = 0.5;
    p.stage[MS_STAGE_DECODE].max_batch = 32;
    p.stage[MS_STAGE_DECODE].slo_share = 1.0;
    cr_assert_eq(ms_policy_decode_cap(&p, 20), 30);  /* (20 - 5) / 0.5 */
    cr_assert_eq(ms_policy_decode_cap(&p, 100), 32); /* the profile's max batch */
    cr_assert_eq(ms_policy_decode_cap(&p, 3), 1);    /* SLO unreachable: still one */
    p.tbt_ms = 10;
    cr_assert_eq(ms_policy_decode_cap(&p, 0), 10); /* default TBT: (10 - 5) / 0.5 */
    p.stage[MS_STAGE_DECODE].slo_share = 0.5;
    cr_assert_eq(ms_policy_decode_cap(&p, 20), 10); /* budget 10 ms */
    p.stage[MS_STAGE_DECODE].slo_share = 1.0;

    ms_actor_view d = s_actor(0, MS_STAGES_DECODE, 0, 0, 29, 50);
    cr_assert(ms_policy_admit_decode(&d, &p, 20, 10));
    d.running_seqs = 30;
    cr_assert_not(ms_policy_admit_decode(&d, &p, 20, 10), "the 31st sequence breaks the TBT");
    d.running_seqs = 0;
    cr_assert_not(ms_policy_admit_decode(&d, &p, 20, 51), "not enough KV blocks");
    cr_assert(ms_policy_admit_decode(&d, &p, 20, 50));
    d.state = MS_ACTOR_DRAINING;
    cr_assert_not(ms_policy_admit_decode(&d, &p, 20, 1));
    ms_actor_view e = s_actor(1, MS_STAGES_ENCODE, 0, 0, 0, 1000);
    cr_assert_not(ms_policy_admit_decode(&e, &p, 20, 1), "an encoder does not decode");
}

Test(policy, decode_routes_to_most_free_kv_that_admits, .timeout = 10) {
    ms_profile p;
    ms_profile_default(&p);
    p.stage[MS_STAGE_DECODE] = (ms_stage_profile){
        .max_batch = 8, .base_ms = 4, .per_unit_ms = 1, .slo_share = 1, .capacity_per_s = 0};
    ms_actor_view a[4] = {s_actor(0, MS_STAGES_DECODE, 0, 0, 8, 900), /* batch full */
                          s_actor(1, MS_STAGES_DECODE, 0, 0, 3, 400),
                          s_actor(2, MS_STAGES_DECODE, 0, 0, 1, 400),
                          s_actor(3, MS_STAGES_PREFILL, 0, 0, 0, 5000)};
    ms_req_view r = s_req(30, 0, 1000, NULL, 0, 100);
    r.tbt_ms = 50;
    int32_t t = -1;
    cr_assert_eq(ms_policy_route_decode(a, 4, &r, MS_STAGES_DECODE, &p, 10, &t), MS_ROUTE_OK);
    cr_assert_eq(t, 2); /* actor 0 has more KV but its batch is at the cap; tie → fewer running */
    ms_policy_charge_decode(a, 2, 10);
    cr_assert_eq(a[2].running_seqs, 2);
    cr_assert_eq(a[2].free_kv_blocks, 390);
    cr_assert_eq(ms_policy_route_decode(a, 4, &r, MS_STAGES_DECODE, &p, 10, &t), MS_ROUTE_OK);
    cr_assert_eq(t, 1);
    cr_assert_eq(ms_policy_route_decode(a, 4, &r, MS_STAGES_DECODE, &p, 1000, &t), MS_ROUTE_FULL);
    a[0].alive = a[1].alive = a[2].alive = false;
    cr_assert_eq(ms_policy_route_decode(a, 4, &r, MS_STAGES_DECODE, &p, 10, &t), MS_ROUTE_NONE);
}

/* ---- admission at the front door -------------------------------------------- */

Test(policy, bounded_queues_reject_with_overloaded, .timeout = 10) {
    ms_queue_limits lim = {0};
    lim.max_pending_requests = 2;
    lim.max_pending_image_tokens = 10000;
    lim.max_images_per_request = 8;
    lim.max_request_tokens = 8000;
    int32_t img[2] = {729, 729};
    ms_req_view r = s_req(40, 0, 1000, img, 2, 100);
    ms_queue_depth d = {.requests = 1, .image_tokens = 0, .prompt_tokens = 0};
    cr_assert_eq(ms_policy_admit_request(&d, &lim, &r), MS_ADMIT_OK);
    d.requests = 2;
    cr_assert_eq(ms_policy_admit_request(&d, &lim, &r), MS_ADMIT_OVERLOADED);
    d.requests = 0;
    d.image_tokens = 10000 - 1458;
    cr_assert_eq(ms_policy_admit_request(&d, &lim, &r), MS_ADMIT_OK);
    d.image_tokens++;
    cr_assert_eq(ms_policy_admit_request(&d, &lim, &r), MS_ADMIT_OVERLOADED);

    d = (ms_queue_depth){0};
    int32_t many[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    r = s_req(41, 0, 1000, many, 9, 10);
    cr_assert_eq(ms_policy_admit_request(&d, &lim, &r), MS_ADMIT_TOO_LARGE);
    r = s_req(42, 0, 1000, NULL, 0, 8001);
    cr_assert_eq(ms_policy_admit_request(&d, &lim, &r), MS_ADMIT_TOO_LARGE);
    int32_t big[1] = {10001};
    lim.max_request_tokens = 0;
    r = s_req(43, 0, 1000, big, 1, 10);
    cr_assert_eq(ms_policy_admit_request(&d, &lim, &r), MS_ADMIT_TOO_LARGE);

    ms_queue_limits none = {0}; /* all unlimited */
    d.requests = 1 << 30;
    cr_assert_eq(ms_policy_admit_request(&d, &none, &r), MS_ADMIT_OK);
}

/* ---- slack and the queue ------------------------------------------------------ */

Test(policy, slack_puts_small_short_deadline_before_huge, .timeout = 10) {
    ms_profile p;
    ms_profile_default(&p); /* encode 2 + 0.05/token, prefill 1 + 0.02/token */
    int32_t imgs[16];
    for (int i = 0; i < 16; i++)
        imgs[i] = 729;
    ms_req_view huge = s_req(50, 0, 5000, imgs, 16, 400); /* arrives first */
    ms_req_view small = s_req(51, 100, 500, NULL, 0, 20); /* arrives later */
    int32_t one[1] = {64};
    ms_req_view small_img = s_req(52, 120, 800, one, 1, 20);

    /* Hand-worked: huge encode = 2 + 0.05*11664 = 585.2, prefill = 1 + 0.02*12064
     * = 242.28 → 827.48 ms. small prefill = 1 + 0.02*20 = 1.4 ms. */
    double sh = ms_policy_service_ms(&p, MS_STAGE_ENCODE, &huge);
    cr_assert_float_eq(sh, 827.48, 1e-6);
    double ss = ms_policy_service_ms(&p, MS_STAGE_PREFILL, &small);
    cr_assert_float_eq(ss, 1.4, 1e-9);
    cr_assert_float_eq(ms_policy_service_ms(&p, MS_STAGE_ENCODE, &small), 1.4, 1e-9,
                       "a text request's encode term is 0");
    cr_assert_float_eq(ms_policy_slack(&small, 100, ss), 498.6, 1e-9);
    cr_assert_float_eq(ms_policy_slack(&huge, 100, sh), 5000 - 100 - 827.48, 1e-9);
    cr_assert(ms_policy_slack(&small, 700, ss) < 0, "late requests have negative slack");

    ms_pqueue q;
    ms_pqueue_init(&q);
    ms_pq_item it = ms_pq_item_make(&p, MS_STAGE_PREFILL, &huge, 0, 0);
    cr_assert_eq(it.cost, 400 + 16 * 729);
    ms_pqueue_push(&q, &it);
    it = ms_pq_item_make(&p, MS_STAGE_PREFILL, &small, 0, 0);
    cr_assert_eq(it.cost, 20);
    ms_pqueue_push(&q, &it);
    it = ms_pq_item_make(&p, MS_STAGE_PREFILL, &small_img, 0, 0);
    ms_pqueue_push(&q, &it);
    cr_assert_eq(ms_pqueue_len(&q), 3);
    ms_pq_item o;
    cr_assert_eq(ms_pqueue_pop(&q, &o), 0);
    cr_assert_eq(o.rid, 51);
    cr_assert_eq(ms_pqueue_pop(&q, &o), 0);
    cr_assert_eq(o.rid, 52);
    cr_assert_eq(ms_pqueue_pop(&q, &o), 0);
    cr_assert_eq(o.rid, 50);
    cr_assert_eq(ms_pqueue_pop(&q, &o), -1);
    cr_assert_null(ms_pqueue_peek(&q));

    /* FIFO would serve the huge one first; with equal targets the huge one has
     * less slack and legitimately goes first. */
    ms_req_view small_same = s_req(53, 100, 5000, NULL, 0, 20);
    it = ms_pq_item_make(&p, MS_STAGE_ENCODE, &small_same, 0, 0);
    ms_pqueue_push(&q, &it);
    it = ms_pq_item_make(&p, MS_STAGE_ENCODE, &huge, 0, 0);
    ms_pqueue_push(&q, &it);
    cr_assert_eq(ms_pqueue_peek(&q)->rid, 50);
    ms_pqueue_fini(&q);
}

Test(policy, equal_slack_is_fifo, .timeout = 10) {
    ms_pqueue q;
    ms_pqueue_init(&q);
    /* Same latest start: earlier arrival first; same arrival: push order. */
    ms_pq_item a = {.rid = 1, .arrival_ms = 30, .latest_start_ms = 100, .cost = 1};
    ms_pq_item b = {.rid = 2, .arrival_ms = 10, .latest_start_ms = 100, .cost = 1};
    ms_pq_item c = {.rid = 3, .arrival_ms = 10, .latest_start_ms = 100, .cost = 1};
    ms_pq_item d = {.rid = 4, .arrival_ms = 50, .latest_start_ms = 99, .cost = 1};
    ms_pqueue_push(&q, &a);
    ms_pqueue_push(&q, &b);
    ms_pqueue_push(&q, &c);
    ms_pqueue_push(&q, &d);
    uint64_t want[4] = {4, 2, 3, 1};
    for (int i = 0; i < 4; i++) {
        ms_pq_item o;
        cr_assert_eq(ms_pqueue_pop(&q, &o), 0);
        cr_assert_eq(o.rid, want[i], "pop %d: rid %llu", i, (unsigned long long)o.rid);
    }
    ms_pqueue_fini(&q);
}

Test(policy, heap_matches_sorted_order_and_removes_by_rid, .timeout = 20) {
    enum { N = 2000 };
    ms_pqueue q;
    ms_pqueue_init(&q);
    ms_pq_item *ref = malloc(N * sizeof(*ref));
    uint64_t x = 12345;
    size_t nref = 0;
    for (int i = 0; i < N; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        ms_pq_item it = {.rid = (uint64_t)(i % 97),
                         .arrival_ms = (int64_t)((x >> 33) % 50),
                         .latest_start_ms = (double)((x >> 13) % 40),
                         .cost = 1};
        ms_pqueue_push(&q, &it);
        it.seq = (uint64_t)i; /* what the queue assigns */
        if (it.rid != 42) ref[nref++] = it;
    }
    cr_assert_eq(ms_pqueue_remove_rid(&q, 42), (size_t)(N / 97 + (N % 97 > 42)));
    cr_assert_eq(ms_pqueue_remove_rid(&q, 42), 0);
    cr_assert_eq(ms_pqueue_len(&q), nref);
    qsort(ref, nref, sizeof(*ref), ms_pq_item_cmp);
    for (size_t i = 0; i < nref; i++) {
        ms_pq_item o;
        cr_assert_eq(ms_pqueue_pop(&q, &o), 0);
        cr_assert_eq(o.seq, ref[i].seq, "position %zu", i);
    }
    cr_assert_eq(ms_pqueue_len(&q), 0);
    free(ref);
    ms_pqueue_fini(&q);
}

/* ---- batch caps ------------------------------------------------------------------ */

static void s_push_costs(ms_pqueue *q, const int64_t *costs, int n) {
    for (int i = 0; i < n; i++) {
        ms_pq_item it = {.rid = (uint64_t)(100 + i),
                         .arrival_ms = i,
                         .latest_start_ms = (double)i,
                         .cost = costs[i]};
        ms_pqueue_push(q, &it);
    }
}

Test(policy, next_batch_respects_caps, .timeout = 10) {
    ms_profile p;
    ms_profile_default(&p);
    cr_assert_eq(ms_policy_batch_cap(&p, MS_STAGE_PREFILL), 2048);
    cr_assert_eq(ms_policy_batch_cap(&p, MS_STAGE_ENCODE), 4);
    cr_assert_eq(ms_policy_batch_cap(&p, MS_STAGE_DECODE), 32);

    /* Prefill by tokens: 1000 + 900 fit in 2048; 300 would not: stop there, and the
     * 50 behind it does not jump the queue. */
    ms_pqueue q;
    ms_pqueue_init(&q);
    int64_t tok[4] = {1000, 900, 300, 50};
    s_push_costs(&q, tok, 4);
    ms_pq_item out[8];
    size_t n = ms_policy_next_batch(&q, ms_policy_batch_cap(&p, MS_STAGE_PREFILL), out, 8);
    cr_assert_eq(n, 2);
    cr_assert_eq(out[0].rid, 100);
    cr_assert_eq(out[1].rid, 101);
    n = ms_policy_next_batch(&q, 2048, out, 8);
    cr_assert_eq(n, 2);
    cr_assert_eq(out[0].cost + out[1].cost, 350);
    cr_assert_eq(ms_policy_next_batch(&q, 2048, out, 8), 0);

    /* An item larger than the cap still runs, alone. */
    int64_t big[2] = {5000, 10};
    s_push_costs(&q, big, 2);
    n = ms_policy_next_batch(&q, 2048, out, 8);
    cr_assert_eq(n, 1);
    cr_assert_eq(out[0].cost, 5000);
    cr_assert_eq(ms_policy_next_batch(&q, 2048, out, 8), 1);

    /* Encode by images (cap 4): 1 + 2 fit, the next 2 would make 5. */
    int64_t ims[4] = {1, 2, 2, 1};
    s_push_costs(&q, ims, 4);
    n = ms_policy_next_batch(&q, ms_policy_batch_cap(&p, MS_STAGE_ENCODE), out, 8);
    cr_assert_eq(n, 2);
    n = ms_policy_next_batch(&q, 4, out, 8);
    cr_assert_eq(n, 2);
    cr_assert_eq(out[0].cost + out[1].cost, 3);

    /* Decode by sequences (cap 3) and the out_max bound. */
    int64_t seqs[5] = {1, 1, 1, 1, 1};
    s_push_costs(&q, seqs, 5);
    cr_assert_eq(ms_policy_next_batch(&q, 3, out, 8), 3);
    cr_assert_eq(ms_policy_next_batch(&q, 3, out, 1), 1);
    cr_assert_eq(ms_policy_next_batch(&q, 3, out, 0), 0);
    cr_assert_eq(ms_pqueue_len(&q), 1);
    ms_pqueue_fini(&q);
}

Test(policy, batch_follows_slack_order, .timeout = 10) {
    ms_profile p;
    ms_profile_default(&p);
    ms_pqueue q;
    ms_pqueue_init(&q);
    /* Three prefill requests; the cap fits two of the small ones. */
    ms_req_view r1 = s_req(1, 0, 9000, NULL, 0, 1500);
    ms_req_view r2 = s_req(2, 10, 300, NULL, 0, 1000);
    ms_req_view r3 = s_req(3, 20, 400, NULL, 0, 1000);
    ms_pq_item it;
    it = ms_pq_item_make(&p, MS_STAGE_PREFILL, &r1, 0, 0);
    ms_pqueue_push(&q, &it);
    it = ms_pq_item_make(&p, MS_STAGE_PREFILL, &r2, 0, 0);
    ms_pqueue_push(&q, &it);
    it = ms_pq_item_make(&p, MS_STAGE_PREFILL, &r3, 0, 0);
    ms_pqueue_push(&q, &it);
    ms_pq_item out[4];
    size_t n = ms_policy_next_batch(&q, 2048, out, 4);
    cr_assert_eq(n, 2);
    cr_assert_eq(out[0].rid, 2);
    cr_assert_eq(out[1].rid, 3);
    cr_assert_eq(ms_pqueue_peek(&q)->rid, 1);
    /* Encode items carry the images placed on that encoder as cost. */
    int32_t img[3] = {10, 10, 10};
    ms_req_view r4 = s_req(4, 0, 900, img, 3, 5);
    it = ms_pq_item_make(&p, MS_STAGE_ENCODE, &r4, 7, 2);
    cr_assert_eq(it.cost, 2);
    cr_assert_eq(it.task, 7);
    it = ms_pq_item_make(&p, MS_STAGE_ENCODE, &r4, 0, 0);
    cr_assert_eq(it.cost, 3);
    it = ms_pq_item_make(&p, MS_STAGE_DECODE, &r4, 0, 0);
    cr_assert_eq(it.cost, 1);
    ms_pqueue_fini(&q);
}
