// The stream-K GEMM kernel's timeline as gemm_bench --timeline prints it (built with the CMake
// option XY_GEMM_TIMELINE: kernels/gemm_kernels.cuh declares the records, gemm_wgmma_sk.cu fills
// them). The lines are described in gemm_bench.cu's header comment.
#pragma once

#if XY_GEMM_TIMELINE
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "xyserve/backend/cuda/kernels/gemm_kernels.cuh"

namespace xy::bench {

double median_of(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Sums over one kind of segment (whole or split), in cycles.
struct SegmentSums {
  int64_t count = 0;
  double k_blocks = 0, wait = 0, loop = 0, fixup = 0, epilogue = 0;
  int64_t outcomes[3] = {};   // kSegCompleted: 0 added and left, 1 added and stored, 2 read back
  double outcome_fixup[3] = {};
};

// Where the CTAs of one launch spend their time: the lines of the header comment.
void print_sk_timeline(const xy::cuda::gemm_detail::SkTimeline& t, int num_sms, int khz) {
  namespace gd = xy::cuda::gemm_detail;
  const double us = 1e3 / double(khz);  // a cycle
  auto cta_row = [&](int c) { return t.ctas.data() + size_t(c) * gd::kSkCtaFields; };
  auto seg_row = [&](int c, int i) {
    return t.segments.data() + (size_t(c) * gd::kSkTimelineSegments + i) * gd::kSkSegmentFields;
  };
  long long first_entry = LLONG_MAX, last_exit = LLONG_MIN;
  int num_ctas = 0;
  for (int c = 0; c < gd::kSkTimelineCtas; ++c) {
    const long long* r = cta_row(c);
    if (r[gd::kCtaEntryNs] < 0 || r[gd::kCtaExitNs] < 0) continue;
    first_entry = std::min(first_entry, r[gd::kCtaEntryNs]);
    last_exit = std::max(last_exit, r[gd::kCtaExitNs]);
    ++num_ctas;
  }
  if (num_ctas == 0) {
    std::printf("  no timeline recorded\n");
    return;
  }
  const double span_ns = double(last_exit - first_entry);
  std::map<long long, std::pair<long long, long long>> sm_busy;  // SM -> (first entry, last exit)
  std::vector<double> entries, exits, first_loads, last_loads, first_fulls, last_mains, outs, k_blocks;
  std::set<long long> tiles;
  long long k_iters = 0, unrecorded = 0;
  double ns = 0, busy = 0, setup = 0;  // consumer entry to exit: globaltimer, cycles
  SegmentSums sums[2];  // [split]
  for (int c = 0; c < gd::kSkTimelineCtas; ++c) {
    const long long* r = cta_row(c);
    if (r[gd::kCtaEntryNs] < 0 || r[gd::kCtaExitNs] < 0) continue;
    const long long in = r[gd::kCtaConsumerIn];
    entries.push_back(1e-3 * double(r[gd::kCtaEntryNs] - first_entry));
    exits.push_back(1e-3 * double(r[gd::kCtaExitNs] - first_entry));
    auto [it, fresh] = sm_busy.try_emplace(r[gd::kCtaSm], r[gd::kCtaEntryNs], r[gd::kCtaExitNs]);
    if (!fresh) {
      it->second.first = std::min(it->second.first, r[gd::kCtaEntryNs]);
      it->second.second = std::max(it->second.second, r[gd::kCtaExitNs]);
    }
    ns += double(r[gd::kCtaExitNs] - r[gd::kCtaEntryNs]);
    busy += double(r[gd::kCtaConsumerOut] - in);
    if (r[gd::kCtaFirstLoad] >= 0) first_loads.push_back(double(r[gd::kCtaFirstLoad] - in) * us);
    if (r[gd::kCtaLastLoad] >= 0) last_loads.push_back(double(r[gd::kCtaLastLoad] - in) * us);
    outs.push_back(double(r[gd::kCtaConsumerOut] - in) * us);
    const int recorded = int(std::min<long long>(r[gd::kCtaNumSegments], gd::kSkTimelineSegments));
    unrecorded += r[gd::kCtaNumSegments] - recorded;
    double cta_k_blocks = 0;
    for (int i = 0; i < recorded; ++i) {
      const long long* e = seg_row(c, i);
      if (e[gd::kSegStart] < 0 || e[gd::kSegEpilogueDone] < 0) continue;
      const bool split = e[gd::kSegSplit] != 0;
      const long long blocks = e[gd::kSegKbEnd] - e[gd::kSegKbBegin];
      const long long fixed = split ? e[gd::kSegFixupDone] : e[gd::kSegMainDone];
      SegmentSums& m = sums[split];
      ++m.count;
      m.k_blocks += double(blocks);
      m.wait += double(e[gd::kSegFirstFull] - e[gd::kSegStart]);
      m.loop += double(e[gd::kSegMainDone] - e[gd::kSegFirstFull]);
      m.fixup += double(fixed - e[gd::kSegMainDone]);
      m.epilogue += double(e[gd::kSegEpilogueDone] - fixed);
      const long long outcome = std::clamp<long long>(e[gd::kSegCompleted], 0, 2);
      ++m.outcomes[outcome];
      m.outcome_fixup[outcome] += double(fixed - e[gd::kSegMainDone]);
      if (i == 0) {
        setup += double(e[gd::kSegStart] - in);
        first_fulls.push_back(double(e[gd::kSegFirstFull] - in) * us);
      }
      if (i == recorded - 1) last_mains.push_back(double(e[gd::kSegMainDone] - in) * us);
      cta_k_blocks += double(blocks);
      tiles.insert(e[gd::kSegTile]);
      k_iters = std::max(k_iters, e[gd::kSegKbEnd]);
    }
    k_blocks.push_back(cta_k_blocks);
  }
  double sm_ns = 0;
  for (const auto& [sm, iv] : sm_busy) sm_ns += double(iv.second - iv.first);
  const double mean_k_blocks = std::accumulate(k_blocks.begin(), k_blocks.end(), 0.0) / double(k_blocks.size());
  std::printf("  %d CTAs on %zu SMs, %zu tiles x %lld K blocks, %.1f K blocks a CTA (%.0f-%.0f); span %.1f us, "
              "SMs busy %.0f%% of SMs x span; clock %d MHz (measured %.0f)\n",
              num_ctas, sm_busy.size(), tiles.size(), k_iters, mean_k_blocks,
              *std::min_element(k_blocks.begin(), k_blocks.end()), *std::max_element(k_blocks.begin(), k_blocks.end()),
              1e-3 * span_ns, 100 * sm_ns / (double(num_sms) * span_ns), khz / 1000, 1e3 * busy / ns);
  std::sort(entries.begin(), entries.end());
  std::sort(exits.begin(), exits.end());
  std::printf("  entry +%.2f/%.2f/%.2f us, exit +%.2f/%.2f/%.2f us (min/median/max after the first entry); from the "
              "consumer's entry (medians): producer's first TMA load +%.2f, last +%.2f; first full barrier +%.2f, "
              "last main loop done +%.2f, exit +%.2f us\n",
              entries.front(), median_of(entries), entries.back(), exits.front(), median_of(exits), exits.back(),
              median_of(first_loads), median_of(last_loads), median_of(first_fulls), median_of(last_mains),
              median_of(outs));
  for (const bool split : {false, true}) {
    const SegmentSums& m = sums[split];
    if (m.count == 0) {
      std::printf("  %-5s   0 segments\n", split ? "split" : "whole");
      continue;
    }
    const double n = double(m.count);
    std::printf("  %-5s %3lld segments, %5.1f K blocks: wait first full %.2f, main %.2f (%.3f a K block), "
                "fix-up %.2f, epilogue %.2f us",
                split ? "split" : "whole", (long long)m.count, m.k_blocks / n, m.wait / n * us, m.loop / n * us,
                m.loop / m.k_blocks * us, m.fixup / n * us, m.epilogue / n * us);
    if (split) {
      auto mean_fixup = [&](int o) { return m.outcomes[o] ? m.outcome_fixup[o] / double(m.outcomes[o]) * us : 0.0; };
      std::printf("; fix-up by outcome: added and left %lld (%.2f us), added and stored %lld (%.2f), read back "
                  "and stored %lld (%.2f)",
                  (long long)m.outcomes[0], mean_fixup(0), (long long)m.outcomes[1], mean_fixup(1),
                  (long long)m.outcomes[2], mean_fixup(2));
    }
    std::printf("\n");
  }
  const double wait = sums[0].wait + sums[1].wait, loop = sums[0].loop + sums[1].loop;
  const double fixup = sums[0].fixup + sums[1].fixup, epilogue = sums[0].epilogue + sums[1].epilogue;
  const double rest = busy - setup - wait - loop - fixup - epilogue;
  std::printf("  consumer busy %.2f us a CTA: setup %.0f%%, wait first full %.0f%%, main loop %.0f%%, fix-up %.0f%%, "
              "epilogue %.0f%%, rest %.0f%%",
              busy / num_ctas * us, 100 * setup / busy, 100 * wait / busy, 100 * loop / busy, 100 * fixup / busy,
              100 * epilogue / busy, 100 * rest / busy);
  if (unrecorded > 0) std::printf(" (%lld segments past the first %d of their CTA not recorded)", unrecorded,
                                  gd::kSkTimelineSegments);
  std::printf("\n");
}

// The swapped kernel's ring (take_swap_timeline; fields SwapBlockField): per CTA over the K blocks
// of its first group past the first `skip` (the ring's fill), the period between consumer 0's
// successive waits for data, and the shares of it spent waiting for data and in the rest, split
// into issuing the block's MMAs with waiting for the previous block's, and releasing a stage with
// the loop; the producer's wait for a stage's release; the load latency (loads issued to data in)
// where the consumer was waiting; the first data after the first issue. Medians over CTAs of
// per-CTA means, in cycles of the SM's clock (clock64: under a heavy tensor load the H200 runs
// below its nominal clock, so no conversion), and that clock itself (clock64 over %globaltimer
// across the group).
void print_swap_timeline(const std::vector<long long>& t, int skip) {
  namespace gd = xy::cuda::gemm_detail;
  auto at = [&](int c, int b, int f) {
    return t[(size_t(c) * gd::kSwapTimelineBlocks + b) * gd::kSwapBlockFields + f];
  };
  std::vector<double> period, starve, rest, mma, release, empty_wait, latency, first, span, mhz;
  int ctas = 0, blocks = 0;
  for (int c = 0; c < gd::kSwapTimelineCtas; ++c) {
    int n = 0;
    while (n < gd::kSwapTimelineBlocks && at(c, n, gd::kSwapFullWait) >= 0 && at(c, n, gd::kSwapPrevDone) >= 0) ++n;
    if (n == 0) continue;
    ++ctas;
    blocks = std::max(blocks, n);
    if (at(c, 0, gd::kSwapIssued) >= 0) {
      first.push_back(double(at(c, 0, gd::kSwapFullDone) - at(c, 0, gd::kSwapIssued)));
    }
    span.push_back(double(at(c, n - 1, gd::kSwapPrevDone) - at(c, 0, gd::kSwapFullWait)));
    if (n > 1 && at(c, n - 1, gd::kSwapFullWaitNs) > at(c, 0, gd::kSwapFullWaitNs)) {
      mhz.push_back(1e3 * double(at(c, n - 1, gd::kSwapFullWait) - at(c, 0, gd::kSwapFullWait)) /
                    double(at(c, n - 1, gd::kSwapFullWaitNs) - at(c, 0, gd::kSwapFullWaitNs)));
    }
    double p = 0, s = 0, r = 0, q = 0, e = 0, l = 0;
    int np = 0, ne = 0, nl = 0;
    for (int b = std::min(skip, n - 1); b + 1 < n; ++b) {
      const double fw = double(at(c, b, gd::kSwapFullWait)), fd = double(at(c, b, gd::kSwapFullDone));
      p += double(at(c, b + 1, gd::kSwapFullWait)) - fw;
      s += fd - fw;
      r += double(at(c, b + 1, gd::kSwapFullWait)) - fd;
      q += double(at(c, b, gd::kSwapPrevDone)) - fd;
      ++np;
      if (at(c, b, gd::kSwapEmptyWait) >= 0 && at(c, b, gd::kSwapIssued) >= 0) {
        e += double(at(c, b, gd::kSwapIssued) - at(c, b, gd::kSwapEmptyWait));
        ++ne;
        if (fd - fw > 50) {  // the consumer waited: the data came in at about fd
          l += fd - double(at(c, b, gd::kSwapIssued));
          ++nl;
        }
      }
    }
    if (np > 0) {
      period.push_back(p / np), starve.push_back(s / np), rest.push_back(r / np);
      mma.push_back(q / np), release.push_back((r - q) / np);
    }
    if (ne > 0) empty_wait.push_back(e / ne);
    if (nl > 0) latency.push_back(l / nl);
  }
  if (ctas == 0) {
    std::printf("  no CTA stamped\n");
    return;
  }
  const double pm = median_of(period);
  std::printf("  %d CTAs, %d K blocks in the first group (the first %d left out); medians over CTAs, cycles:\n",
              ctas, blocks, skip);
  std::printf("  K block period %.0f: consumer 0 waiting for data %.0f (%.0f%%), issuing and waiting for the "
              "previous block's MMAs %.0f (%.0f%%)\n",
              pm, median_of(starve), 100 * median_of(starve) / pm, median_of(rest), 100 * median_of(rest) / pm);
  std::printf("  of which issuing + wgmma_wait<1> %.0f, releasing the previous stage and looping %.0f; SM clock %.0f MHz "
              "(clock64 over %%globaltimer, the group's span)\n",
              median_of(mma), median_of(release), mhz.empty() ? 0.0 : median_of(mhz));
  std::printf("  producer: wait for a release + issue %.0f per block; load latency (issue to data, blocks the "
              "consumer waited for: %zu CTAs) %.0f; first data %.0f after the first issue; group span %.0f\n",
              median_of(empty_wait), latency.size(), median_of(latency), median_of(first), median_of(span));
}

}  // namespace xy::bench
#endif
