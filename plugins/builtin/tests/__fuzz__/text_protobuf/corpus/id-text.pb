
golden-0QA moving, beautifully acted film that stays with you long after the credits roll.