#!/usr/bin/env python3
"""Writes grafana/*.json: the EMS dashboards, Flux queries over what the gateway's InfluxDB sink
writes. Run from dashboards/: python3 tools/generate.py"""
import json
DS={"type":"influxdb","uid":"ems-influxdb"}
TZ='import "date"\nimport "timezone"\noption location = timezone.location(name: "${tz}")\n'
def src(fields, meas="ems_unit", unit_filter=True, rng="range(start: v.timeRangeStart, stop: v.timeRangeStop)"):
    f=" or ".join('r._field == "%s"' % x for x in fields)
    u=' and r.unit == "${unit}"' if unit_filter else ""
    return 'from(bucket: "${bucket}")\n  |> %s\n  |> filter(fn: (r) => r._measurement == "%s"%s and (%s))\n' % (rng, meas, u, f)
def ratio(num, den, every, name, unit_filter=True, by_unit=False, rng=None):
    kw={"rng":rng} if rng else {}
    q=TZ+src([num,den], unit_filter=unit_filter, **kw)
    grp='["unit", "_field"]' if by_unit else '["_field"]'
    q+='  |> group(columns: %s)\n' % grp
    if every:
        q+='  |> aggregateWindow(every: %s, fn: sum, createEmpty: false, timeSrc: "_start")\n' % every
        q+='  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
        q+='  |> filter(fn: (r) => r.%s > 0.0)\n' % den
        q+='  |> map(fn: (r) => ({_time: r._time, _value: r.%s / r.%s, _field: "%s"}))\n' % (num, den, name)
    else:
        q+='  |> sum()\n  |> pivot(rowKey: ["unit"], columnKey: ["_field"], valueColumn: "_value")\n'
        q+='  |> filter(fn: (r) => r.%s > 0.0)\n' % den
        q+='  |> map(fn: (r) => ({unit: r.unit, _value: r.%s / r.%s}))\n  |> group()\n' % (num, den)
    return q
def mean_of(fields, every):
    return TZ+src(fields)+'  |> aggregateWindow(every: %s, fn: mean, createEmpty: false, timeSrc: "_start")\n' % every
def sum_by_unit(field, every, scale=None):
    q=TZ+src([field], unit_filter=False)+'  |> group(columns: ["unit"])\n  |> aggregateWindow(every: %s, fn: sum, createEmpty: false, timeSrc: "_start")\n' % every
    if scale: q+='  |> map(fn: (r) => ({r with _value: r._value * %s}))\n' % scale
    return q
def target(q, ref="A"): return {"refId":ref,"datasource":DS,"query":q}
def panel(pid, title, kind, targets, x, y, w=12, h=8, unit=None, custom=None):
    d={}
    if unit: d["unit"]=unit
    if custom: d["custom"]=custom
    return {"id":pid,"type":kind,"title":title,"datasource":DS,"gridPos":{"x":x,"y":y,"w":w,"h":h},
            "targets":targets,"fieldConfig":{"defaults":d,"overrides":[]},"options":{}}
def variables(with_unit):
    v=[{"name":"bucket","type":"constant","query":"ems","hide":2,"label":"InfluxDB bucket"},
       {"name":"tz","type":"constant","query":"Asia/Shanghai","hide":2,"label":"Plant time zone"}]
    if with_unit:
        v.append({"name":"unit","label":"Unit / 工序","type":"query","datasource":DS,
                  "query":'import "influxdata/influxdb/schema"\nschema.tagValues(bucket: "${bucket}", tag: "unit", predicate: (r) => r._measurement == "ems_unit")',
                  "refresh":1,"current":{}})
    return {"list":v}
today='range(start: date.truncate(t: now(), unit: 1d), stop: now())'
def dash(uid,title,desc,with_unit,panels):
    return {"uid":uid,"title":title,"schemaVersion":39,"version":1,"editable":True,
            "time":{"from":"now-2d","to":"now"},"refresh":"1m","timezone":"browser","tags":["ems"],
            "description":desc,"templating":variables(with_unit),"panels":panels}
overview=dash("ems-overview","EMS plant overview / 能源管理总览",
 "Mirrors the built-in overview from the InfluxDB sink's 15-minute rollups. Unit figures are sums of energy over sums of product, never a mean of ratios. Set the tz constant to the plant's time zone.",False,[
  panel(1,"Unit energy today (kgce/t) / 今日单位产品综合能耗","bargauge",[target(ratio("energy_kgce","product_t",None,"kgce_per_t",unit_filter=False,by_unit=True,rng=today))],0,0,unit="kgce/t"),
  panel(2,"Unit electricity today (kWh/t) / 今日单位产品电耗","bargauge",[target(ratio("electricity_kwh","product_t",None,"kwh_per_t",unit_filter=False,by_unit=True,rng=today))],12,0,unit="kWh/t"),
  panel(3,"Comprehensive energy by unit (kgce per hour) / 综合能耗","timeseries",[target(sum_by_unit("energy_kgce","1h"))],0,8,unit="kgce"),
  panel(4,"Recovered energy, negative (kgce per hour) / 回收能源","timeseries",[target(sum_by_unit("recovered_kgce","1h","-1.0"))],12,8,unit="kgce"),
  panel(5,"Product output (t per hour) / 产品产量","timeseries",[target(sum_by_unit("product_t","1h"))],0,16,unit="t"),
  panel(6,"Water (m³ per hour) / 取水量","timeseries",[target(sum_by_unit("water_m3","1h"))],12,16,unit="m³"),
 ])
unitd=dash("ems-unit","EMS unit / 工序能效",
 "One process unit: unit energy by hour and day against the corrected level thresholds of its first limit standard, energy by carrier (recovered below zero), water against its quota, data completeness.",True,[
  panel(1,"kgce/t by hour, with level 1/2/3 thresholds / 小时单耗与限额","timeseries",[
     target(ratio("energy_kgce","product_t","1h","kgce_per_t")),
     target(mean_of(["level1_threshold","level2_threshold","level3_threshold"],"1h"),"B")],0,0,w=24,unit="kgce/t"),
  panel(2,"kgce/t by day, with the limit / 日单耗","timeseries",[
     target(ratio("energy_kgce","product_t","1d","kgce_per_t")),
     target(mean_of(["level3_threshold"],"1d"),"B")],0,8,unit="kgce/t"),
  panel(3,"kWh/t by hour / 小时电耗","timeseries",[target(ratio("electricity_kwh","product_t","1h","kwh_per_t"))],12,8,unit="kWh/t"),
  panel(4,"Energy by carrier, recovered below zero (kgce per hour) / 分能源品种","timeseries",
     [target(TZ+src(["kgce"],meas="ems_carrier")+'  |> group(columns: ["carrier"])\n  |> aggregateWindow(every: 1h, fn: sum, createEmpty: false, timeSrc: "_start")\n')],0,16,unit="kgce",
     custom={"stacking":{"mode":"normal","group":"A"},"drawStyle":"bars","fillOpacity":80}),
  panel(5,"Water m³/t against the quota / 单位产品取水量","timeseries",[
     target(ratio("water_m3","product_t","1h","water_m3_per_t")),
     target(mean_of(["water_quota_m3_per_t"],"1h"),"B")],12,16,unit="m³/t"),
  panel(6,"Completeness and estimated share / 数据完整率","timeseries",[target(mean_of(["completeness","estimated_share"],"1h"))],0,24,unit="percentunit"),
  panel(7,"Level reached (latest 15 min) / 能效等级","stat",[target(TZ+src(["level"])+'  |> last()\n')],12,24),
 ])
for name,d in [("ems-overview.json",overview),("ems-unit.json",unitd)]:
    open("grafana/"+name,"w").write(json.dumps(d,indent=2,ensure_ascii=False)+"\n")
