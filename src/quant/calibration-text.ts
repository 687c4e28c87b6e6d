/**
 * The built-in calibration and held-out texts of `glmtool quantize` (used when --calib is not
 * given, and always for the end-to-end report). Written for glmtool, in the mix ChatGLM serves:
 * Chinese and English prose, dialogue in the chat template's style, numbers, and code. Small on
 * purpose (a few thousand tokens): activation-aware scales need each channel's typical
 * magnitude, not a corpus. The two sets share no paragraph, so the end-to-end KL divergence is
 * measured on text the calibration never saw.
 */

export const CALIBRATION_TEXT: readonly string[] = [
  '春天的早晨，城市还没有完全醒来。街角的早餐店已经冒出热气，老板一边擀面，一边和熟客聊着昨天的天气预报。公交车慢慢驶过，车窗上映着刚刚升起的太阳。',
  'The committee met on Tuesday to review the budget for the new library. After two hours of discussion, they agreed to postpone the decision until the engineers deliver a revised estimate for the roof.',
  '问：如何在家里做一碗简单的番茄鸡蛋面？\n答：先把番茄切块，鸡蛋打散炒熟盛出。锅里放少许油，加入番茄翻炒出汁，再加水煮开，下面条。面快熟时倒回鸡蛋，加盐和葱花即可。',
  'def moving_average(values, window):\n    """Return the moving average of a list of numbers."""\n    if window <= 0:\n        raise ValueError("window must be positive")\n    out = []\n    total = 0.0\n    for i, v in enumerate(values):\n        total += v\n        if i >= window:\n            total -= values[i - window]\n        out.append(total / min(i + 1, window))\n    return out',
  '机器学习模型在部署之前通常需要压缩。量化把浮点权重映射到少量整数级别，可以显著减少显存占用和带宽需求，但也会带来一定的精度损失。选择合适的缩放因子是关键。',
  'In 1869 the first transcontinental railroad in the United States was completed, cutting the journey from coast to coast from several months to about a week. Freight rates fell and new towns grew along the line.',
  '[Round 1]\n\n问：你好，请介绍一下你自己。\n\n答：你好！我是一个语言模型助手，可以回答问题、翻译文本、写作和解释代码。有什么可以帮你的吗？',
  'A prime number has exactly two divisors: one and itself. The first ten primes are 2, 3, 5, 7, 11, 13, 17, 19, 23 and 29. Every integer greater than one can be written as a product of primes in exactly one way, up to order.',
  '黄河是中国的第二长河，全长约五千四百六十四公里，流经青海、四川、甘肃、宁夏、内蒙古、山西、陕西、河南和山东九个省区，最后注入渤海。',
  'SELECT customer_id, COUNT(*) AS orders, SUM(amount) AS total\nFROM orders\nWHERE created_at >= DATE \'2023-01-01\'\nGROUP BY customer_id\nHAVING COUNT(*) > 3\nORDER BY total DESC\nLIMIT 20;',
  'She opened the old notebook and found a list written in her grandmother\'s careful handwriting: flour, two eggs, a pinch of salt, and a note at the bottom that said "stir slowly, and do not rush the dough."',
  '今天的会议主要讨论了三个问题：第一，下季度的产品路线图；第二，测试环境的资源分配；第三，新同事的入职培训安排。会议决定每周五下午进行一次进度同步。',
  'The thermostat reads 21.5 degrees, the humidity is 48 percent, and the forecast calls for light rain after 6 p.m. with winds from the northwest at 15 to 20 kilometres per hour.',
  'const cache = new Map();\nfunction fib(n) {\n  if (n < 2) return n;\n  if (cache.has(n)) return cache.get(n);\n  const v = fib(n - 1) + fib(n - 2);\n  cache.set(n, v);\n  return v;\n}\nconsole.log(fib(40));',
  '学习一门新的语言，最重要的是坚持。每天读一点、听一点、说一点，比一周突击一次更有效。遇到不懂的词语，可以先猜测它的意思，再查词典确认。',
  'Photosynthesis converts light energy into chemical energy. In the chloroplasts, water is split, oxygen is released, and carbon dioxide is fixed into sugars that the plant uses to grow.',
]

export const HELD_OUT_TEXT: readonly string[] = [
  '秋天到了，山上的枫叶一片一片变红。周末的时候，很多人带着孩子去郊外爬山，山顶的风很大，但是看到的风景让人觉得一切都值得。',
  'The bridge was closed for repairs, so the bus took a long detour through the industrial district. Most passengers looked at their phones; a child by the window counted the cranes along the river.',
  '问：为什么天空是蓝色的？\n答：阳光进入大气层后会被空气分子散射，波长较短的蓝光散射得更强，所以我们从各个方向看到的天空都偏蓝色。',
  'for (int i = 0; i < n; ++i) {\n    sum += a[i] * b[i];\n}\nprintf("dot product = %f\\n", sum);',
  'A good estimate is often better than a precise answer that arrives too late. Engineers learn to ask which digits matter, and to check an order of magnitude before trusting a long calculation.',
  '这家小书店开在巷子深处，门口摆着几盆绿植。店主喜欢推荐冷门的诗集，也会在每本书里夹一张手写的书签，写着他读这本书时的感受。',
]
