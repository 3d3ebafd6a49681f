import json, statistics, sys
a = {b["fullname"]: b["stats"]["median"] for b in json.load(open(sys.argv[1]))["benchmarks"]}
b = {b["fullname"]: b["stats"]["median"] for b in json.load(open(sys.argv[2]))["benchmarks"]}
common = sorted(set(a) & set(b))
ratios = sorted(max(a[k], b[k]) / min(a[k], b[k]) for k in common)
print(f"cases {len(common)}; within 1.5x: {sum(r <= 1.5 for r in ratios)}; within 1.2x: {sum(r <= 1.2 for r in ratios)}; "
      f"median ratio {statistics.median(ratios):.3f}; worst {ratios[-1]:.2f}")
worst = sorted(common, key=lambda k: max(a[k], b[k]) / min(a[k], b[k]))[-5:]
for k in worst:
    print(f"  {max(a[k], b[k]) / min(a[k], b[k]):.2f}x  {a[k]*1e3:.3f} ms vs {b[k]*1e3:.3f} ms  {k}")
