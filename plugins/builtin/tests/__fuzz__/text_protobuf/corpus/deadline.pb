
p-7COne of the best movies of the year: funny, smart and full of heart.2 €Ðê¶·3