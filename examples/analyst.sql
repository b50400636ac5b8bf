-- Analyst walkthrough: useful questions over the published tables in STATS.
--
-- Run one statement at a time with the sandboxed query command, e.g.
--   anonymizer query --stats ./stats "SELECT * FROM traffic_daily ORDER BY date DESC LIMIT 7"
--   anonymizer query --stats ./stats "$(cat my_query.sql)" --format csv
-- or from Python: anonymizer.connect("./stats").sql("...").df()
--
-- Things to keep in mind when reading the numbers (design section 7):
-- * Dates and hours are local to the time zone the pipeline ran with (see
--   `anonymizer notice`).
-- * `visitors` counts distinct visitors per day (per cohort week in retention_weekly).
--   Summing it over several days counts a person once per day they came back: STATS has
--   no identifier to de-duplicate them, on purpose.
-- * Any value seen by fewer than k visitors on a day is folded into an '(other)' row
--   (a NULL `hour` in hourly_traffic). A page can be named on busy days and folded on quiet
--   ones, so per-value sums over a period are lower bounds; totals are exact.
-- * "Recent" below means relative to the last published day, not today, so the queries
--   also work on old data.

-- 1. The last seven published days: pageviews, visits, visitors, bounce rate, visit length.
SELECT date, pageviews, visits, visitors, bounce_rate, avg_visit_seconds
FROM traffic_daily
WHERE date > (SELECT MAX(date) FROM traffic_daily) - INTERVAL 7 DAY
ORDER BY date;

-- 2. Weekly totals. Rates are re-weighted by visits; averaging daily rates would give a
--    quiet Sunday the same weight as a busy Monday.
SELECT CAST(date_trunc('week', date) AS DATE) AS week,
       SUM(pageviews) AS pageviews,
       SUM(visits) AS visits,
       SUM(visitors) AS visitor_days,
       ROUND(SUM(bounce_rate * visits) / SUM(visits), 3) AS bounce_rate,
       ROUND(SUM(avg_visit_seconds * visits) / SUM(visits), 1) AS avg_visit_seconds
FROM traffic_daily
GROUP BY week
ORDER BY week;

-- 3. This week against the week before (the comparison the marketing report makes).
WITH last AS (SELECT MAX(date) AS d FROM traffic_daily),
periods AS (
    SELECT CASE WHEN date > d - INTERVAL 7 DAY THEN 'this_week' ELSE 'previous_week' END AS period,
           pageviews, visits
    FROM traffic_daily, last
    WHERE date > d - INTERVAL 14 DAY
)
SELECT SUM(pageviews) FILTER (WHERE period = 'this_week') AS pageviews,
       SUM(pageviews) FILTER (WHERE period = 'previous_week') AS previous_pageviews,
       ROUND(100.0 * (SUM(pageviews) FILTER (WHERE period = 'this_week')
             - SUM(pageviews) FILTER (WHERE period = 'previous_week'))
             / NULLIF(SUM(pageviews) FILTER (WHERE period = 'previous_week'), 0), 1)
         AS change_pct
FROM periods;

-- 4. Top pages of the last 28 days, with how often each was the first page of a visit.
SELECT page,
       SUM(pageviews) AS pageviews,
       SUM(entries) AS entries,
       ROUND(SUM(entries) / SUM(pageviews), 3) AS entry_share
FROM pages_daily
WHERE date > (SELECT MAX(date) FROM pages_daily) - INTERVAL 28 DAY
  AND page <> '(other)'
GROUP BY page
ORDER BY pageviews DESC
LIMIT 10;

-- 5. Channel mix per week: each channel's share of the week's visits.
WITH weekly AS (
    SELECT CAST(date_trunc('week', date) AS DATE) AS week, channel, SUM(visits) AS visits
    FROM sources_daily
    GROUP BY week, channel
)
SELECT week, channel, visits,
       ROUND(visits / SUM(visits) OVER (PARTITION BY week), 3) AS share
FROM weekly
ORDER BY week, visits DESC;

-- 6. Which sites send visitors: referral and social sources, busiest first.
SELECT source, channel, SUM(visits) AS visits, COUNT(*) AS days_seen
FROM sources_daily
WHERE channel IN ('referral', 'social') AND source <> '(other)'
GROUP BY source, channel
ORDER BY visits DESC
LIMIT 20;

-- 7. Campaign performance (UTM tags), with the number of days each campaign was visible.
SELECT utm_source, utm_medium, utm_campaign,
       SUM(visits) AS visits,
       SUM(visitors) AS visitor_days,
       MIN(date) AS first_day,
       MAX(date) AS last_day
FROM campaigns_daily
GROUP BY utm_source, utm_medium, utm_campaign
ORDER BY visits DESC;

-- 8. Devices and browsers: share of visitor-days and pageviews per visitor-day.
SELECT device_type, browser,
       SUM(visitors) AS visitor_days,
       ROUND(SUM(visitors) / SUM(SUM(visitors)) OVER (), 3) AS share,
       ROUND(SUM(pageviews) / SUM(visitors), 2) AS pages_per_visitor_day
FROM technology_daily
GROUP BY device_type, browser
ORDER BY visitor_days DESC;

-- 9. The busiest hours of the day (local time), averaged over the days with data.
--    The folded hours (NULL) are shown last as '(other)'.
SELECT COALESCE(CAST(hour AS VARCHAR), '(other)') AS local_hour,
       ROUND(SUM(pageviews) / COUNT(DISTINCT date), 1) AS avg_pageviews_per_day
FROM hourly_traffic
GROUP BY hour
ORDER BY hour NULLS LAST;

-- 10. Audience languages (primary Accept-Language; NULL when the browser sent none).
SELECT COALESCE(language, '(none)') AS language,
       SUM(visitors) AS visitor_days,
       ROUND(SUM(visitors) / SUM(SUM(visitors)) OVER (), 3) AS share
FROM languages_daily
GROUP BY language
ORDER BY visitor_days DESC;

-- 11. Consent rate per purpose and week: granted / (granted + refused) decisions.
SELECT CAST(date_trunc('week', date) AS DATE) AS week,
       purpose,
       SUM(granted) AS granted,
       SUM(refused) AS refused,
       ROUND(SUM(granted) / NULLIF(SUM(granted) + SUM(refused), 0), 3) AS consent_rate
FROM consent_daily
GROUP BY week, purpose
ORDER BY week, purpose;

-- 12. Slow pages: the worst daily 95th-percentile response time of successful requests.
SELECT page, MAX(p95_ms) AS worst_p95_ms, ROUND(AVG(p50_ms), 1) AS avg_p50_ms,
       SUM(requests) AS requests
FROM performance_daily
WHERE status_class = '2xx' AND page <> '(other)'
GROUP BY page
ORDER BY worst_p95_ms DESC
LIMIT 10;

-- 13. Errors: share of requests per day answered with a 4xx or 5xx status. An error class
--     seen by fewer than k visitors that day is inside the '(other)' row, so this is a
--     lower bound.
SELECT date,
       COALESCE(SUM(requests) FILTER (WHERE status_class IN ('4xx', '5xx')), 0) AS errors,
       SUM(requests) AS requests,
       ROUND(COALESCE(SUM(requests) FILTER (WHERE status_class IN ('4xx', '5xx')), 0)
             / SUM(requests), 4) AS error_rate
FROM performance_daily
GROUP BY date
ORDER BY date;

-- 14. Retention (visitors who consented to statistics only): the share of each weekly
--     cohort that came back N weeks later.
SELECT cohort_week, week_offset, visitors,
       ROUND(visitors / FIRST_VALUE(visitors) OVER (
           PARTITION BY cohort_week ORDER BY week_offset), 3) AS retained
FROM retention_weekly
ORDER BY cohort_week, week_offset;
